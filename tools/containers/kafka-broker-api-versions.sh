#!/bin/sh
# The official image's /opt/kafka/bin/kafka-broker-api-versions.sh (compose's health check).
exec java -Xmx128m -cp '/opt/kafka/libs/*' -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
  kafka.admin.BrokerApiVersionsCommand "$@"
