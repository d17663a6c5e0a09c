#!/bin/sh
# Kafka's secure mode under compose (deploy/compose.secure.yaml), on the official apache/kafka
# image or the one tools/containers builds: every KAFKA_* variable becomes a server property
# (as both images do), the broker's own SCRAM login comes from its password file, and every
# user's SCRAM credentials are bootstrapped into the metadata when the storage is formatted.
# No password is in the environment, the compose file or `docker inspect`.
set -eu
secrets=${SAGALINE_SECRETS_DIR:-/secrets}
conf=/tmp/server.properties
umask 077
: > "$conf"
env | grep '^KAFKA_' | grep -v '^KAFKA_\(HEAP_OPTS\|OPTS\|JVM_PERFORMANCE_OPTS\|LOG4J_OPTS\)=' \
  | while IFS='=' read -r name value; do
  key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed 's/___/-/g; s/_/./g')
  printf '%s=%s\n' "$key" "$value" >> "$conf"
done
broker_password=$(head -n 1 "$secrets/kafka-passwords/broker")
login="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"broker\" password=\"$broker_password\";"
for listener in $(printf '%s' "${KAFKA_LISTENER_SECURITY_PROTOCOL_MAP:?}" | tr ',' '\n' | grep ':SASL_SSL$' | cut -d: -f1); do
  printf 'listener.name.%s.scram-sha-512.sasl.jaas.config=%s\n' "$(printf '%s' "$listener" | tr 'A-Z' 'a-z')" "$login" >> "$conf"
done
# what the health check connects with (the broker's own user, over TLS)
cat > /tmp/client.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$login
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/tls/ca.pem
PROPS
set -f  # the credentials' brackets are not file patterns
set --
while read -r credential; do set -- "$@" --add-scram "$credential"; done < "$secrets/kafka/scram-users"
run() {
  if [ -x /opt/kafka/bin/kafka-run-class.sh ]; then
    /opt/kafka/bin/kafka-run-class.sh "$@"
  else
    java -cp '/opt/kafka/libs/*' -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties "$@"
  fi
}
run kafka.tools.StorageTool format --cluster-id="${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$conf" \
  --ignore-formatted "$@" >/dev/null
if [ -x /opt/kafka/bin/kafka-server-start.sh ]; then
  exec /opt/kafka/bin/kafka-server-start.sh "$conf"
fi
exec java ${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m} -cp '/opt/kafka/libs/*' \
  -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties kafka.Kafka "$conf"
