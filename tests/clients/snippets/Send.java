// Plain JavaMail (Jakarta Mail 2) from the Secret mounted at `dir`: javamail.properties, with
// mail.from for setFrom(), SMTP_PASSWORD and SMTP_REPLY_TO as files. JavaMail has no property
// naming a truststore file; the CA is given to the JVM:
//   java -Djavax.net.ssl.trustStore=$DIR/truststore.jks \
//        -Djavax.net.ssl.trustStorePassword=$TRUSTSTORE_PASSWORD ...
import jakarta.mail.Message;
import jakarta.mail.Session;
import jakarta.mail.Transport;
import jakarta.mail.internet.InternetAddress;
import jakarta.mail.internet.MimeMessage;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;

public class Send {
    public static void send(Path dir, String to, String subject) throws Exception {
        Properties props = new Properties();
        try (var in = Files.newInputStream(dir.resolve("javamail.properties"))) {
            props.load(in);
        }
        MimeMessage msg = new MimeMessage(Session.getInstance(props));
        msg.setFrom();  // mail.from: "=?utf-8?q?Zo=C3=AB_Billing?= <billing@example.com>"
        if (Files.exists(dir.resolve("SMTP_REPLY_TO"))) {
            msg.setReplyTo(InternetAddress.parse(Files.readString(dir.resolve("SMTP_REPLY_TO"))));
        }
        msg.setRecipients(Message.RecipientType.TO, to);
        msg.setSubject(subject, "UTF-8");
        msg.setText("Hello from JavaMail", "UTF-8");
        if (Boolean.parseBoolean(props.getProperty("mail.smtp.auth"))) {
            Transport.send(msg, props.getProperty("mail.smtp.user"),
                           Files.readString(dir.resolve("SMTP_PASSWORD")));
        } else {
            Transport.send(msg);
        }
    }
}
