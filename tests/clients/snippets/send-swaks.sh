#!/bin/sh
# swaks from the env keys (envFrom); the password and the CA from the Secret mounted at
# SENDER_DIR. Usage: send-swaks.sh TO SUBJECT
set -eu
case "$SMTP_SECURITY" in
  STARTTLS) tls="-tls --tls-verify --tls-ca-path $SENDER_DIR/ca.crt" ;;  # -tls: required
  SMTPS)    tls="--tls-on-connect --tls-verify --tls-ca-path $SENDER_DIR/ca.crt" ;;
  *)        tls="" ;;
esac
if [ -n "${SMTP_PASSWORD:-}" ]; then
  set -- "$@" --auth PLAIN --auth-user "$SMTP_USERNAME" --auth-password "$SMTP_PASSWORD"
fi
name="=?UTF-8?B?$(printf '%s' "${SMTP_FROM_NAME:-}" | base64 | tr -d '\n')?="
to="$1"; subject="$2"; shift 2
exec swaks --silent 2 --server "$SMTP_HOST" --port "$SMTP_PORT" $tls "$@" \
  --from "$SMTP_FROM" --to "$to" --header "Subject: $subject" \
  --header "From: $name <$SMTP_FROM>" ${SMTP_REPLY_TO:+--header "Reply-To: $SMTP_REPLY_TO"} \
  --body "Hello from swaks"
