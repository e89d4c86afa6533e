<?php
// Symfony Mailer from MAILER_DSN (envFrom); the CA through php -d openssl.cafile=<mount>/ca.crt
// (or openssl.cafile in php.ini). Debian's autoloaders; with Composer: vendor/autoload.php.
require_once '/usr/share/php/Symfony/Component/Mailer/autoload.php';
require_once '/usr/share/php/Symfony/Component/Mime/autoload.php';

use Symfony\Component\Mailer\Mailer;
use Symfony\Component\Mailer\Transport;
use Symfony\Component\Mime\Address;
use Symfony\Component\Mime\Email;

$mailer = new Mailer(Transport::fromDsn(getenv('MAILER_DSN')));
$email = (new Email())
    ->from(new Address(getenv('SMTP_FROM'), getenv('SMTP_FROM_NAME') ?: ''))
    ->to($argv[1])
    ->subject($argv[2])
    ->text('Hello from Symfony Mailer');
if (getenv('SMTP_REPLY_TO')) {
    $email->replyTo(getenv('SMTP_REPLY_TO'));
}
$mailer->send($email);
