#!/bin/sh
# Tutorial 2 ("Container networking with iptables and namespaces", seed 2), sections 1.1 to 1.2,
# command by command WITH the article's own mistakes. `netcheck review script-tutorial2-verbatim.toml`
# finds each one, corrects it and shows that the correction works (tests/test_script_review.py).
# Adapted only where netcheck's sandbox requires it:
#   - no sudo (netcheck runs this as root inside the sandbox host namespace);
#   - the namespaces get the names netcheck gives ($NETCHECK_NETNS_HTTP2 for http2), and so
#     does /etc/netns/<name>;
#   - the host's uplink is $NETCHECK_UPLINK instead of enp0s3;
#   - the resolver is netcheck's own in the outside world, 203.0.113.53, for 8.8.8.8
#     (nothing may leave the machine);
#   - the web server runs in the background (`&`): a setup command must return;
#   - http3 is made "as in previous section", as the article assumes, with 10.0.0.12.
# No `set -e`: like a reader typing the commands, it goes on after a command fails.
HTTP2=$NETCHECK_NETNS_HTTP2
HTTP3=$NETCHECK_NETNS_HTTP3

# 1.1.1 Create a network namespace
ipnetns add "$HTTP2"
ip netns exec "$HTTP2" pythohn3 -m http.server 8080 >/dev/null 2>&1 &

# Create a virtual ethernet interface pair
ip link add dev veth_http2 type veth peer name veth_ns_http2
# Move second veth into namespace
ip link set veth_ns_http2 netns "$HTTP2"
# Enable interfaces
ip link set dev veth_http2 up
ip netns exec "$HTTP2" ip link set dev veth_ns_http2 up
# Add IP addresses to both interfaces
ip address add 10.0.0.10/24 dev veth_http2
ip netns exec "$HTTP2" ip address add 10.0.0.11/24 dev veth_ns_http2
ip netns exec "$HTTP2" ip link set dev lo up

# 1.1.2 Routing between namespaces
ip netns exec "$HTTP2" ip route add default via 10.0.0.10
echo 1 | tee /proc/sys/net/ipv4/ip_forward
iptables --append FORWARD --in-interface veth_http2 --out-interface "$NETCHECK_UPLINK" --jump ACCEPT
iptables --append FORWARD --in-interface "$NETCHECK_UPLINK" --out-interface veth_http2 --jump ACCEPT
iptables --append POSTROUTING --table nat --out-interface "$NETCHECK_UPLINK" --jump MASQUERADE
# Set default DNS on http2 ns
mkdir -p /etc/netns/"$HTTP2"
echo "nameserver 203.0.113.53 | tee /etc/netns/$HTTP2/resolv.conf"

# http3, "created as in previous section"
ip netns add "$HTTP3"
ip link add dev veth_http3 type veth peer name veth_ns_http3
ip link set veth_ns_http3 netns "$HTTP3"
ip link set dev veth_http3 up
ip netns exec "$HTTP3" ip link set dev veth_ns_http3 up
ip netns exec "$HTTP3" ip address add 10.0.0.12/24 dev veth_ns_http3
ip netns exec "$HTTP3" ip link set dev lo up

# 1.1.3 Bridging networks
ip link add dev bridge_local type bridge
ip address add 10.0.0.1/24 dev bridge_local
ip link set bridge_local up
ip link set dev veth_http2 master bridge_local
ip link set dev veth_htt3 master bridge_local
ip netns "$HTTP2" ip route add default via 10.0.0.1
ip netns "$HTTP3" ip route add default via 10.0.0.1
iptables --append FORWARD --in-interface bridge_local --jump ACCEPT
iptables --append FORWARD --out-interface bridge_local --jump ACCEPT
iptables --table nat --append POSTROUTING --source 10.0.0.0/24 --jump MASQUERADE

# 1.2 Virtual IPs
iptables --table nat --new VIP-EXAMPLE
iptables --table nat --append PREROUTING --jump VIP-EXAMPLE
iptables --table nat --append OUTPUT --jump VIP-EXAMPLE
iptables --table nat --append VIP-EXAMPLE \
    --destination 10.100.100.100 --protocol tcp \
    --match tcp --dport 8080 --jump DNAT \
    --to-destination 10.0.0.11:8080
