#!/bin/sh
# Kafka 3.9.2 (KRaft) configured like the official apache/kafka image: every KAFKA_FOO_BAR
# environment variable becomes foo.bar in server.properties.
set -e
conf=/opt/kafka/config/server.properties
mkdir -p /opt/kafka/config /var/lib/kafka/data
: > "$conf"
env | grep '^KAFKA_' | while IFS='=' read -r name value; do
  key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed 's/___/-/g; s/_/./g')
  printf '%s=%s\n' "$key" "$value" >> "$conf"
done
grep -q '^log.dirs=' "$conf" || echo "log.dirs=/var/lib/kafka/data" >> "$conf"
java -cp '/opt/kafka/libs/*' -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
  kafka.tools.StorageTool format --cluster-id="${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$conf" --ignore-formatted
exec java ${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m} -cp '/opt/kafka/libs/*' \
  -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties kafka.Kafka "$conf"
