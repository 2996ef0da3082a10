#!/bin/sh
# Tutorial 1 with the tutorial's own web server in netns0 (its `python3 -m http.server --bind
# 172.18.0.10 5000`). netcheck finds port 5000 served already in netns0, so it probes that server
# instead of starting its own there; the report says whose service answered, and the source address
# that server saw is read from the capture inside netns0 (see docs/tools.md).
set -eu
. "$(dirname "$0")/script-tutorial1.sh"
# The same server, started so that it listens before this command returns: the socket is bound
# first, then the process forks and the parent exits. netcheck records the server (it lives in one of
# the run's namespaces) and ends it at teardown.
nsenter --net=/var/run/netns/"$NETCHECK_NETNS_NETNS0" python3 -c '
import http.server, os
server = http.server.ThreadingHTTPServer(("172.18.0.10", 5000), http.server.SimpleHTTPRequestHandler)
if os.fork():
    os._exit(0)
os.setsid()
server.serve_forever()
' </dev/null >/dev/null 2>&1
