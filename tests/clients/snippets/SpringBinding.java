// What Spring Boot 3.1+ does with the spring.mail.* keys of application.properties
// (MailProperties + MailSenderPropertiesConfiguration + JavaMailSenderImpl), written out with
// Jakarta Mail alone because Spring Boot's jars are not installable on the test machines.
// Binding as Spring Boot does: host/port/username/password/protocol; every
// spring.mail.properties.<k> into the Session's properties; spring.mail.ssl.bundle names a PEM
// bundle whose truststore certificate becomes the SSLContext set as mail.<protocol>.ssl.socketFactory.
import jakarta.mail.Message;
import jakarta.mail.Session;
import jakarta.mail.Transport;
import jakarta.mail.internet.InternetAddress;
import jakarta.mail.internet.MimeMessage;
import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.Properties;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class SpringBinding {
    static SSLContext pemTruststore(String pem) throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        int i = 0;
        for (Certificate cert : CertificateFactory.getInstance("X.509")
                .generateCertificates(new ByteArrayInputStream(pem.getBytes(StandardCharsets.US_ASCII)))) {
            store.setCertificateEntry("ssl-" + i++, cert);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, tmf.getTrustManagers(), null);
        return context;
    }

    public static void send(Path dir, String to, String subject, String replyTo) throws Exception {
        Properties app = new Properties();
        try (var in = Files.newInputStream(dir.resolve("application.properties"))) {
            app.load(in);
        }
        String protocol = app.getProperty("spring.mail.protocol", "smtp");
        Properties mail = new Properties();
        String prefix = "spring.mail.properties.";
        for (String name : app.stringPropertyNames()) {
            if (name.startsWith(prefix)) {
                mail.setProperty(name.substring(prefix.length()), app.getProperty(name));
            }
        }
        if (Boolean.parseBoolean(app.getProperty("spring.mail.ssl.enabled"))) {
            mail.setProperty("mail." + protocol + ".ssl.enable", "true");
        }
        String bundle = app.getProperty("spring.mail.ssl.bundle");
        if (bundle != null) {
            String pem = app.getProperty("spring.ssl.bundle.pem." + bundle + ".truststore.certificate");
            mail.put("mail." + protocol + ".ssl.socketFactory", pemTruststore(pem).getSocketFactory());
        }
        Session session = Session.getInstance(mail);
        MimeMessage msg = new MimeMessage(session);  // JavaMailSender.createMimeMessage()
        msg.setFrom();  // spring.mail.properties.mail.from
        if (replyTo != null) {
            msg.setReplyTo(InternetAddress.parse(replyTo));
        }
        msg.setRecipients(Message.RecipientType.TO, to);
        msg.setSubject(subject, app.getProperty("spring.mail.default-encoding", "UTF-8"));
        msg.setText("Hello from Spring", app.getProperty("spring.mail.default-encoding", "UTF-8"));
        msg.saveChanges();
        try (Transport transport = session.getTransport(protocol)) {  // JavaMailSenderImpl.doSend
            transport.connect(app.getProperty("spring.mail.host"),
                              Integer.parseInt(app.getProperty("spring.mail.port", "-1")),
                              app.getProperty("spring.mail.username"),
                              app.getProperty("spring.mail.password"));
            transport.sendMessage(msg, msg.getAllRecipients());
        }
    }
}
