#!/bin/sh
# Tutorial 1's cleanup: removing the namespaces removes the veth pairs with them. The bridge and
# the rules live in the sandbox host namespace, which netcheck removes afterwards.
set -eu
ip netns del "$NETCHECK_NETNS_NETNS0"
ip netns del "$NETCHECK_NETNS_NETNS1"
ip link del br0
