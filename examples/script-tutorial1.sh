#!/bin/sh
# Tutorial 1, "Understanding single-host container networking" (netcheck's seed1), command by
# command, adapted only where netcheck's sandbox requires it:
#   - the namespaces get the names netcheck gives ($NETCHECK_NETNS_NETNS0 for netns0), so two
#     runs never collide and a crashed run's are removed by `netcheck clean`;
#   - the host's uplink is $NETCHECK_UPLINK with $NETCHECK_UPLINK_IP, instead of eth0 and 10.0.2.15;
#   - the internet (8.8.8.8) is netcheck's outside-world namespace ($NETCHECK_REMOTE).
# netcheck runs this as root inside the sandbox host namespace (no sudo, no VM): see docs/tools.md.
set -eu
NETNS0=$NETCHECK_NETNS_NETNS0
NETNS1=$NETCHECK_NETNS_NETNS1

# The first container: a namespace and a veth pair, one end moved into it.
ip netns add "$NETNS0"
ip link add veth0 type veth peer name ceth0
ip link set veth0 up
ip link set ceth0 netns "$NETNS0"
# (the tutorial enters the namespace with `nsenter --net=/var/run/netns/netns0` and types these)
nsenter --net=/var/run/netns/"$NETNS0" ip link set lo up
nsenter --net=/var/run/netns/"$NETNS0" ip link set ceth0 up
nsenter --net=/var/run/netns/"$NETNS0" ip addr add 172.18.0.10/16 dev ceth0

# The second container, the same way.
ip netns add "$NETNS1"
ip link add veth1 type veth peer name ceth1
ip link set veth1 up
ip link set ceth1 netns "$NETNS1"
nsenter --net=/var/run/netns/"$NETNS1" ip link set lo up
nsenter --net=/var/run/netns/"$NETNS1" ip link set ceth1 up
nsenter --net=/var/run/netns/"$NETNS1" ip addr add 172.18.0.20/16 dev ceth1

# A bridge joins the two host ends; it gets the containers' gateway address.
ip link add br0 type bridge
ip link set br0 up
ip link set veth0 master br0
ip link set veth1 master br0
ip addr add 172.18.0.1/16 dev br0

# Reaching the outside world: a default route, forwarding, masquerade.
nsenter --net=/var/run/netns/"$NETNS0" ip route add default via 172.18.0.1
nsenter --net=/var/run/netns/"$NETNS1" ip route add default via 172.18.0.1
echo 1 > /proc/sys/net/ipv4/ip_forward
iptables -t nat -A POSTROUTING -s 172.18.0.0/16 ! -o br0 -j MASQUERADE

# Publishing port 5000 of netns0 on the host's address. (The tutorial serves it with
# `python3 -m http.server --bind 172.18.0.10 5000` in netns0; netcheck serves HTTP there itself.)
iptables -t nat -A PREROUTING -d "$NETCHECK_UPLINK_IP" -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000
iptables -t nat -A OUTPUT -d "$NETCHECK_UPLINK_IP" -p tcp -m tcp --dport 5000 -j DNAT --to-destination 172.18.0.10:5000
# The tutorial's `sudo modprobe br_netfilter` is left out: the module is loaded on netcheck's
# machines already, and loading it would change every namespace of the machine, not the sandbox.
