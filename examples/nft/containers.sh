#!/bin/sh
# The network the tool-style rule sets of examples/nft/ apply to, as the tool would make it:
# a bridge ($BRIDGE, $GATEWAY/$PREFIX) and one container per name in $NETCHECK_CONTAINERS, each
# in the namespace netcheck names ($NETCHECK_NETNS_<NAME>), on a veth "veth<name>" with
# eth0 inside, at the address $ADDRESS_<NAME>. Then ip_forward, as the tools set it.
# Usage (from the example's folder): BRIDGE=docker0 GATEWAY=172.17.0.1 PREFIX=16 ADDRESS_WEB=... sh nft/containers.sh
set -eu
ip link add "$BRIDGE" type bridge
ip addr add "$GATEWAY/$PREFIX" dev "$BRIDGE"
ip link set "$BRIDGE" up
for name in $NETCHECK_CONTAINERS; do
	upper=$(echo "$name" | tr 'a-z-.' 'A-Z__')
	eval ns="\$NETCHECK_NETNS_$upper"
	eval address="\$ADDRESS_$upper"
	ip netns add "$ns"
	ip link add "veth$name" type veth peer name eth0 netns "$ns"
	ip link set "veth$name" master "$BRIDGE" up
	ip -n "$ns" addr add "$address/$PREFIX" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
	ip -n "$ns" route add default via "$GATEWAY"
done
sysctl -qw net.ipv4.ip_forward=1
