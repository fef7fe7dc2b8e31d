//! Privacy notices by e-mail through Amazon SES (v2 `SendEmail`), where the template's
//! `NoticeEmailSender` names a verified identity: the function may send from that
//! identity only (its IAM policy), to the address a tenant set in its settings.

use aws_sdk_sesv2::error::ProvideErrorMetadata as _;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
use custody::notice::{MailFuture, Mailer};

/// Sends plain-text mails from one verified identity.
#[derive(Debug, Clone)]
pub struct SesMailer {
    pub client: aws_sdk_sesv2::Client,
    /// The verified sender (`NoticeEmailSender`).
    pub from: String,
}

impl Mailer for SesMailer {
    fn send<'a>(&'a self, to: &'a str, subject: &'a str, text: &'a str) -> MailFuture<'a> {
        Box::pin(async move {
            let content = |data: &str| {
                Content::builder()
                    .data(data)
                    .charset("UTF-8")
                    .build()
                    .map_err(|e| e.to_string())
            };
            let message = Message::builder()
                .subject(content(subject)?)
                .body(Body::builder().text(content(text)?).build())
                .build();
            self.client
                .send_email()
                .from_email_address(&self.from)
                .destination(Destination::builder().to_addresses(to).build())
                .content(EmailContent::builder().simple(message).build())
                .send()
                .await
                .map(|_| ())
                // The service's error code only: its message may quote the addresses.
                .map_err(|e| match e.as_service_error() {
                    Some(service) => format!("SES {}", service.code().unwrap_or("error")),
                    None => "SES request did not complete".to_owned(),
                })
        })
    }
}
