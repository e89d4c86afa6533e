// Test harness, not a snippet: runs many sends in one JVM (one start-up per test session).
// Arguments: MODE then groups of DIR TO SUBJECT; prints one line per send, "OK" or the error.
import java.nio.file.Files;
import java.nio.file.Path;

public class Runner {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        for (int i = 1; i + 2 < args.length; i += 3) {
            Path dir = Path.of(args[i]);
            try {
                if (mode.equals("javamail")) {
                    Send.send(dir, args[i + 1], args[i + 2]);
                } else {
                    Path reply = dir.resolve("SMTP_REPLY_TO");
                    SpringBinding.send(dir, args[i + 1], args[i + 2],
                                       Files.exists(reply) ? Files.readString(reply) : null);
                }
                System.out.println("OK");
            } catch (Exception e) {
                Throwable root = e;
                StringBuilder why = new StringBuilder(e.toString());
                while (root.getCause() != null && root.getCause() != root) {
                    root = root.getCause();
                    why.append(" <- ").append(root);
                }
                System.out.println("ERROR " + why.toString().replace('\n', ' '));
            }
        }
    }
}
