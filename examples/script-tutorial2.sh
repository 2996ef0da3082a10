#!/bin/sh
# Tutorial 2, "Container networking with iptables and namespaces", sections 1.1.3 and 1.2
# (netcheck's seed2): two HTTP containers on a bridge and a virtual IP, command by command,
# adapted only where netcheck's sandbox requires it:
#   - the namespaces get the names netcheck gives ($NETCHECK_NETNS_HTTP2 for http2);
#   - the host's uplink is $NETCHECK_UPLINK instead of enp0s3;
#   - the internet is netcheck's outside-world namespace ($NETCHECK_REMOTE).
# netcheck runs this as root inside the sandbox host namespace: see docs/tools.md.
set -eu
HTTP2=$NETCHECK_NETNS_HTTP2
HTTP3=$NETCHECK_NETNS_HTTP3

ip netns add "$HTTP2"
ip netns add "$HTTP3"

# The bridge, with the containers' gateway address.
ip link add bridge_local type bridge
ip link set bridge_local up
ip addr add 10.0.0.1/24 dev bridge_local

# http2: a veth pair, one end in the namespace, the other a port of the bridge.
ip link add veth_http2 type veth peer name veth_ns_http2
ip link set veth_ns_http2 netns "$HTTP2"
ip link set veth_http2 master bridge_local
ip link set veth_http2 up
ip netns exec "$HTTP2" ip addr add 10.0.0.11/24 dev veth_ns_http2
ip netns exec "$HTTP2" ip link set veth_ns_http2 up
ip netns exec "$HTTP2" ip link set lo up
ip netns exec "$HTTP2" ip route add default via 10.0.0.1

# http3, the same way.
ip link add veth_http3 type veth peer name veth_ns_http3
ip link set veth_ns_http3 netns "$HTTP3"
ip link set veth_http3 master bridge_local
ip link set veth_http3 up
ip netns exec "$HTTP3" ip addr add 10.0.0.12/24 dev veth_ns_http3
ip netns exec "$HTTP3" ip link set veth_ns_http3 up
ip netns exec "$HTTP3" ip link set lo up
ip netns exec "$HTTP3" ip route add default via 10.0.0.1

# Forwarding through the host, and masquerade on the way out.
sysctl -w net.ipv4.ip_forward=1
iptables --append FORWARD --in-interface bridge_local --jump ACCEPT
iptables --append FORWARD --out-interface bridge_local --jump ACCEPT
iptables --table nat --append POSTROUTING --source 10.0.0.0/24 --jump MASQUERADE

# The virtual IP 10.100.100.100:8080 -> http2:8080, from outside (PREROUTING) and from the host (OUTPUT).
# (The tutorial serves HTTP on port 8080 in both namespaces; netcheck serves there itself.)
iptables -t nat -N VIP-EXAMPLE
iptables -t nat -A PREROUTING -j VIP-EXAMPLE
iptables -t nat -A OUTPUT -j VIP-EXAMPLE
iptables -t nat -A VIP-EXAMPLE -d 10.100.100.100 -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.11:8080
