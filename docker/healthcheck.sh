#!/usr/bin/env bash
# Container HEALTHCHECK for codetr-serve: GET /healthz on the port of $CODETR_SERVE_BIND and
# succeed only on HTTP 200. Pure bash (/dev/tcp), so the images need no curl/wget: nothing to
# install, no extra package to pin or patch. The server must be bound to 0.0.0.0/[::] or to
# 127.0.0.1 for this to reach it (the images bind 0.0.0.0).
# Exit 0 = healthy, 1 = not (what Docker's HEALTHCHECK expects).
set -uo pipefail
bind=${CODETR_SERVE_BIND:-0.0.0.0:8080}
port=${bind##*:}
if ! exec 3<>"/dev/tcp/127.0.0.1/${port}"; then
  echo "healthcheck: nothing listens on 127.0.0.1:${port}"
  exit 1
fi 2>/dev/null
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3 || exit 1
if ! IFS= read -r -t 4 status <&3; then
  echo "healthcheck: no answer from /healthz"
  exit 1
fi
exec 3<&-
case "$status" in
  "HTTP/1.1 200"* | "HTTP/1.0 200"*) exit 0 ;;
  *) echo "healthcheck: /healthz answered: ${status%$'\r'}"; exit 1 ;;
esac
