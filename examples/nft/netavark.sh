#!/bin/sh
# netavark 1.12+ (nftables driver): podman0, two containers, and the rule set of netavark.nft.
set -eu
BRIDGE=podman0 GATEWAY=10.88.0.1 PREFIX=16 ADDRESS_WEB=10.88.0.2 ADDRESS_CLIENT=10.88.0.3 sh nft/containers.sh
nft -f nft/netavark.nft
