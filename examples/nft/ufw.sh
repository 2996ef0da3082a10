#!/bin/sh
# ufw-style: ufwbr0 with two containers, and the rule set of ufw.rules through iptables-nft (as ufw's iptables is).
set -eu
BRIDGE=ufwbr0 GATEWAY=10.91.0.1 PREFIX=24 ADDRESS_WEB=10.91.0.2 ADDRESS_CLIENT=10.91.0.3 sh nft/containers.sh
sysctl -qw net.bridge.bridge-nf-call-iptables=0
sed "s/ eth0 / $NETCHECK_UPLINK /g" nft/ufw.rules | iptables-nft-restore
