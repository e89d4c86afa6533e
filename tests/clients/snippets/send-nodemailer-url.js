// nodemailer from SMTP_URL (envFrom); the CA through NODE_EXTRA_CA_CERTS=<mount>/ca.crt.
const nodemailer = require("nodemailer");

async function send(to, subject) {
  const env = process.env;
  const transporter = nodemailer.createTransport(env.SMTP_URL, {
    from: { name: env.SMTP_FROM_NAME || "", address: env.SMTP_FROM },
    replyTo: env.SMTP_REPLY_TO,
  });
  await transporter.sendMail({ to, subject, text: "Hello from nodemailer" });
}

send(process.argv[2], process.argv[3]).catch((err) => { console.error(String(err)); process.exit(1); });
