#!/bin/bash
# LocalStack ready hook (mounted into /etc/localstack/init/ready.d/): creates the SNS topic the worker
# publishes to. Its ARN is SNS_TOPIC_ARN in docker-compose.yml; create-topic is idempotent.
set -euo pipefail

awslocal sns create-topic --name flash-promos --region us-east-1
