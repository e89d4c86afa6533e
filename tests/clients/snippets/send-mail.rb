# Ruby's mail gem from the env keys (envFrom); the CA file from the Secret mounted at SENDER_DIR.
require "mail"

security = ENV.fetch("SMTP_SECURITY")
settings = {
  address: ENV.fetch("SMTP_HOST"), port: Integer(ENV.fetch("SMTP_PORT")),
  tls: security == "SMTPS",                      # implicit TLS
  enable_starttls: security == "STARTTLS",       # STARTTLS required, never skipped
  enable_starttls_auto: false,
  ca_file: security == "None" ? nil : File.join(ENV.fetch("SENDER_DIR"), "ca.crt"),
}
if ENV["SMTP_PASSWORD"]
  settings.update(user_name: ENV.fetch("SMTP_USERNAME"), password: ENV.fetch("SMTP_PASSWORD"),
                  authentication: :plain)
end

mail = Mail.new do
  from    Mail::Address.new.tap { |a| a.address = ENV.fetch("SMTP_FROM"); a.display_name = ENV["SMTP_FROM_NAME"] }.to_s
  to      ARGV[0]
  subject ARGV[1]
  body    "Hello from Ruby mail"
end
mail.reply_to = ENV["SMTP_REPLY_TO"] if ENV["SMTP_REPLY_TO"]
mail.charset = "UTF-8"
mail.delivery_method :smtp, settings
mail.deliver!
