#!/bin/sh
# firewalld-style zones: fwbr0 (trusted) with two containers, eth0 (public); the rule set of firewalld.nft.
set -eu
BRIDGE=fwbr0 GATEWAY=10.90.0.1 PREFIX=24 ADDRESS_WEB=10.90.0.2 ADDRESS_CLIENT=10.90.0.3 sh nft/containers.sh
# firewalld needs no br_netfilter: traffic between the bridge's ports is the bridge's own.
sysctl -qw net.bridge.bridge-nf-call-iptables=0
# The uplink carries the name the zone names (the sandbox's uplink is $NETCHECK_UPLINK).
sed "s/\"eth0\"/\"$NETCHECK_UPLINK\"/g" nft/firewalld.nft | nft -f -
