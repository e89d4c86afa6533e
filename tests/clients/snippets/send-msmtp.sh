#!/bin/sh
# msmtp from the env keys (envFrom); the password and the CA from the Secret mounted at
# SENDER_DIR. msmtp sends the message as given, so the script writes the headers (display name
# RFC 2047-encoded). Usage: send-msmtp.sh TO SUBJECT
set -eu
case "$SMTP_SECURITY" in
  STARTTLS) tls="--tls=on --tls-starttls=on --tls-trust-file=$SENDER_DIR/ca.crt" ;;
  SMTPS)    tls="--tls=on --tls-starttls=off --tls-trust-file=$SENDER_DIR/ca.crt" ;;
  *)        tls="--tls=off" ;;
esac
if [ -n "${SMTP_PASSWORD:-}" ]; then
  auth="--auth=plain --user=$SMTP_USERNAME"
else
  auth="--auth=off"
fi
name="=?UTF-8?B?$(printf '%s' "${SMTP_FROM_NAME:-}" | base64 | tr -d '\n')?="
{
  printf 'From: %s <%s>\r\nTo: %s\r\nSubject: %s\r\n' "$name" "$SMTP_FROM" "$1" "$2"
  [ -n "${SMTP_REPLY_TO:-}" ] && printf 'Reply-To: %s\r\n' "$SMTP_REPLY_TO"
  printf '\r\nHello from msmtp\r\n'
} | msmtp --host="$SMTP_HOST" --port="$SMTP_PORT" $tls $auth \
      --passwordeval="cat '$SENDER_DIR/SMTP_PASSWORD'" --from="$SMTP_FROM" -- "$1"
