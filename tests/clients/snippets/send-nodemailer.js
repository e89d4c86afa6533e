// nodemailer from nodemailer.json in the Secret mounted at SENDER_DIR: the transport options
// (secure/requireTLS, auth, tls.ca with the CA inline) and the message defaults (from, replyTo).
const fs = require("fs");
const nodemailer = require("nodemailer");

async function send(to, subject) {
  const config = JSON.parse(fs.readFileSync(`${process.env.SENDER_DIR}/nodemailer.json`, "utf8"));
  const transporter = nodemailer.createTransport(config.transport, config.defaults);
  await transporter.sendMail({ to, subject, text: "Hello from nodemailer" });
}

send(process.argv[2], process.argv[3]).catch((err) => { console.error(String(err)); process.exit(1); });
