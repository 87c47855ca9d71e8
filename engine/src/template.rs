//! Chat templates: the Jinja templates that Hugging Face tokenizers and GGUF
//! files ship to turn a list of messages into a prompt.
//!
//! Templates are rendered with MiniJinja set up the way `transformers` sets up
//! Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls), with the context
//! names templates expect (`messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `raise_exception`) and Python string methods (`.strip()`,
//! `.startswith()`, ...) through `minijinja-contrib`'s pycompat layer.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// The BitNet b1.58 2B-4T format, used when a model ships no template.
pub const DEFAULT_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// One message of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl<'a> ChatMessage<'a> {
    pub fn new(role: &'a str, content: &'a str) -> Self {
        Self { role, content }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// The template failed while rendering, including through its own
    /// `raise_exception("...")` (for example on an unsupported role order).
    #[error("chat template error: {0}")]
    Render(String),
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish()
    }
}

impl ChatTemplate {
    /// Compile `source`; syntax errors are reported here, not at render time.
    pub fn new(source: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(Self { env, source: source.to_string() })
    }

    /// The BitNet 2B-4T template ([`DEFAULT_CHAT_TEMPLATE`]).
    pub fn default_template() -> Self {
        Self::new(DEFAULT_CHAT_TEMPLATE).expect("the default chat template compiles")
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, ChatTemplateError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| ChatTemplateError::Render(describe(&e)))
    }
}

/// The error's message, with the template's own `raise_exception` text kept
/// whole and the position of the failure when MiniJinja knows it.
fn describe(e: &Error) -> String {
    let mut msg = match e.detail() {
        Some(detail) => detail.to_string(),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (template line {line})"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_default_template_renders_bitnet_format() {
        let t = ChatTemplate::default_template();
        let msgs = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
        let out = t.render(&msgs, true, "<|begin_of_text|>", "<|end_of_text|>").unwrap();
        assert_eq!(out, "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: ");
        let out = t.render(&msgs[1..], false, "<s>", "</s>").unwrap();
        assert_eq!(out, "<s>User: Hi<|eot_id|>");
    }

    #[test]
    fn chat_template_supports_python_methods_and_hf_whitespace() {
        let source = "{% for m in messages %}\n  {% if m.role.startswith('u') %}[{{ m.content.strip() }}]{% else %}{{ m.content.upper() }}{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}{{ eos_token }}{% endif %}";
        let t = ChatTemplate::new(source).unwrap();
        let msgs = [ChatMessage::new("user", "  hi  "), ChatMessage::new("assistant", "yo")];
        assert_eq!(t.render(&msgs, true, "", "</s>").unwrap(), "[hi]YO</s>");
    }

    #[test]
    fn chat_template_raise_exception_reports_its_message() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
        let t = ChatTemplate::new(source).unwrap();
        let err = t.render(&[ChatMessage::new("assistant", "x")], false, "", "").unwrap_err();
        assert!(
            matches!(&err, ChatTemplateError::Render(m) if m.contains("Conversation must start with user")),
            "{err}"
        );
        assert_eq!(t.render(&[ChatMessage::new("user", "x")], false, "", "").unwrap(), "ok");
    }

    #[test]
    fn chat_template_syntax_error_is_reported_at_compile_time() {
        assert!(matches!(ChatTemplate::new("{% for m in messages %}"), Err(ChatTemplateError::Syntax(_))));
    }

    #[test]
    fn chat_template_renders_llama3_style_template() {
        let source = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
        let t = ChatTemplate::new(source).unwrap();
        let out = t.render(&[ChatMessage::new("user", " Hello ")], true, "<|begin_of_text|>", "").unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
