#!/bin/sh
# Docker 29 with its nftables backend: docker0, two containers, and the rule set of docker29.nft.
set -eu
BRIDGE=docker0 GATEWAY=172.17.0.1 PREFIX=16 ADDRESS_WEB=172.17.0.2 ADDRESS_CLIENT=172.17.0.3 sh nft/containers.sh
# As on a host where br_netfilter is not loaded: Docker 29's nftables backend does not load it (only for --icc=false).
sysctl -qw net.bridge.bridge-nf-call-iptables=0
nft -f nft/docker29.nft
