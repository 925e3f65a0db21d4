//! Letter templates: `<templates_dir>/<name>.txt`, rendered with minijinja
//! from the command's data, the contact and the mailbox. A first line
//! `Subject: …` is the letter's subject. Undefined variables are errors, so
//! a letter never goes out with a blank where a price should be.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};

use super::MailError;

#[derive(Debug, Default)]
pub(crate) struct Templates {
    env: Environment<'static>,
}

/// A rendered letter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub subject: Option<String>,
    pub text: String,
}

impl Templates {
    /// Loads every `*.txt` file of `dir`; a syntax error names the file.
    pub(crate) fn load(dir: Option<&Path>) -> Result<Self, MailError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let Some(dir) = dir else {
            return Ok(Self { env });
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            MailError::Config(format!("email.templates_dir {}: {e}", dir.display()))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(name), Some("txt")) = (
                path.file_stem().and_then(|n| n.to_str()),
                path.extension().and_then(|e| e.to_str()),
            ) else {
                continue;
            };
            let source = std::fs::read_to_string(&path)
                .map_err(|e| MailError::Config(format!("template {}: {e}", path.display())))?;
            env.add_template_owned(name.to_owned(), source)
                .map_err(|e| MailError::Config(format!("template {}: {e}", path.display())))?;
        }
        Ok(Self { env })
    }

    /// Renders `name` with `data` (an object) plus `contact` and `mailbox`.
    pub(crate) fn render(
        &self,
        name: &str,
        data: &Value,
        contact: &Value,
        mailbox: &str,
    ) -> Result<Rendered, String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|_| format!("no template named {name:?}"))?;
        let mut ctx = match data {
            Value::Object(m) => m.clone(),
            Value::Null => serde_json::Map::new(),
            _ => return Err("the template's data must be an object".into()),
        };
        ctx.insert("contact".into(), contact.clone());
        ctx.insert("mailbox".into(), json!(mailbox));
        let out = template
            .render(minijinja::value::Serde(Value::Object(ctx)))
            .map_err(|e| format!("template {name:?}: {e}"))?;
        Ok(match out.split_once('\n') {
            Some((first, rest)) if first.starts_with("Subject:") => Rendered {
                subject: Some(first["Subject:".len()..].trim().to_owned()),
                text: rest.trim_start_matches(['\r', '\n']).to_owned(),
            },
            _ => Rendered {
                subject: None,
                text: out,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn templates_fill_subject_and_body_and_refuse_missing_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("offer.txt"),
            "Subject: Предложение для {{ company }}\n\nЗдравствуйте, {{ contact.name }}!\n\
             {% for item in items %}- {{ item.name }}: {{ item.price }} ₽\n{% endfor %}{{ mailbox }}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.md"), "ignored").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let r = t
            .render(
                "offer",
                &json!({"company": "Ромашка", "items": [{"name": "Ламинат", "price": 990}]}),
                &json!({"name": "Мария"}),
                "sales@example.com",
            )
            .unwrap();
        assert_eq!(r.subject.as_deref(), Some("Предложение для Ромашка"));
        assert_eq!(
            r.text,
            "Здравствуйте, Мария!\n- Ламинат: 990 ₽\nsales@example.com"
        );
        let missing = t
            .render("offer", &json!({"company": "X"}), &json!({}), "m")
            .unwrap_err();
        assert!(missing.contains("offer"), "{missing}");
        assert!(
            t.render("nope", &json!({}), &json!({}), "m")
                .unwrap_err()
                .contains("nope")
        );

        std::fs::write(dir.path().join("broken.txt"), "{% for %}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("broken.txt"), "{err}");
    }
}
