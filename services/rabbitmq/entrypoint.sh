#!/bin/sh
# Writes the definitions RabbitMQ imports at boot (see rabbitmq.conf), then
# starts the official image's entrypoint. The file is the topology
# generated from shared/broker (mounted at /etc/dabba/definitions.json)
# plus a user made from RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS:
# a node that imports definitions at boot creates no default user, and
# credentials never go into the repository.
set -eu
: "${RABBITMQ_DEFAULT_USER:?set RABBITMQ_DEFAULT_USER}" "${RABBITMQ_DEFAULT_PASS:?set RABBITMQ_DEFAULT_PASS}"
case "$RABBITMQ_DEFAULT_USER$RABBITMQ_DEFAULT_PASS" in
*'"'* | *'\'*)
	echo "entrypoint: RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS must not contain \" or \\" >&2
	exit 1
	;;
esac
topology=/etc/dabba/definitions.json
out=/etc/rabbitmq/definitions.json
# The generated file is one JSON object whose first line is "{": the user
# goes in front of its other members.
if [ "$(head -n 1 "$topology")" != "{" ]; then
	echo "entrypoint: $topology does not start with a line holding only {" >&2
	exit 1
fi
umask 077
{
	echo "{"
	echo "  \"users\": [{\"name\": \"$RABBITMQ_DEFAULT_USER\", \"password\": \"$RABBITMQ_DEFAULT_PASS\", \"tags\": \"administrator\"}],"
	echo "  \"permissions\": [{\"user\": \"$RABBITMQ_DEFAULT_USER\", \"vhost\": \"/\", \"configure\": \".*\", \"write\": \".*\", \"read\": \".*\"}],"
	tail -n +2 "$topology"
} >"$out"
if [ "$(id -u)" = 0 ]; then
	chown rabbitmq:rabbitmq "$out"
fi
exec docker-entrypoint.sh "$@"
