#!/bin/sh
# Writes dashboards/alertmanager.yml ($1) to $2 with the webhook placeholders replaced by the secrets in
# ALERTMANAGER_PAGE_WEBHOOK_URL and ALERTMANAGER_TICKET_WEBHOOK_URL (an unset one keeps its placeholder). The
# output is readable by its owner only. Busybox sh and awk (the Alertmanager image) and any POSIX system;
# awk, not sed: a URL's "&" or "|" would be sed syntax.
set -eu
umask 077
awk '
  function url(name) { return ENVIRON[name] }
  /alertmanager-page-webhook\.invalid/ && url("ALERTMANAGER_PAGE_WEBHOOK_URL") != "" {
    sub(/http.*/, ""); print $0 "\"" url("ALERTMANAGER_PAGE_WEBHOOK_URL") "\""; next
  }
  /alertmanager-ticket-webhook\.invalid/ && url("ALERTMANAGER_TICKET_WEBHOOK_URL") != "" {
    sub(/http.*/, ""); print $0 "\"" url("ALERTMANAGER_TICKET_WEBHOOK_URL") "\""; next
  }
  { print }
' "$1" > "$2.tmp"
mv "$2.tmp" "$2"
