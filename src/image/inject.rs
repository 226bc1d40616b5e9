//! Rewrite `istioctl kube-inject` output so sidecars run `/usr/local/bin/mosn`.
//!
//! The YAML is parsed (every document) to find the exact places: the `binaryPath` inside
//! the JSON of each `PROXY_CONFIG` env value, `binaryPath` in `proxy.istio.io/config`
//! annotations, and container `command`/`args` entries naming the envoy binary. Only those
//! byte ranges are edited, so everything else (comments, order, quoting) stays as it was;
//! the result is parsed again to prove the edits landed.

use anyhow::{bail, Context, Result};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The path kube-inject may leave in the sidecar's config.
pub const ENVOY: &str = "/usr/local/bin/envoy";
/// Where `mosnctl overlay` puts the binary.
pub const MOSN: &str = "/usr/local/bin/mosn";

/// A parsed node with the source range of scalars.
#[derive(Debug)]
enum Node {
    Scalar {
        value: String,
        start: usize,
        end: usize,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Other,
}

/// Builds [`Node`] trees; a scalar's range ends where the next event starts.
#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    stack: Vec<(Node, Option<Node>)>,
    open_scalar: bool,
    error: Option<String>,
}

impl Builder {
    fn attach(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((Node::Seq(items), _)) => items.push(node),
            Some((Node::Map(pairs), pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => pairs.push((key, node)),
            },
            Some(_) => self.error = Some("unexpected YAML structure".into()),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = mark.index();
        if std::mem::take(&mut self.open_scalar) {
            close_scalar(self, at);
        }
        match ev {
            Event::Scalar(value, ..) => {
                self.attach(Node::Scalar {
                    value,
                    start: at,
                    end: usize::MAX,
                });
                self.open_scalar = true;
            }
            Event::SequenceStart(..) => self.stack.push((Node::Seq(Vec::new()), None)),
            Event::MappingStart(..) => self.stack.push((Node::Map(Vec::new()), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.attach(node);
                }
            }
            Event::Alias(_) => self.attach(Node::Other),
            _ => {}
        }
    }
}

/// Set the end of the most recently attached scalar.
fn close_scalar(b: &mut Builder, end: usize) {
    fn last_scalar(n: &mut Node) -> Option<&mut usize> {
        match n {
            Node::Scalar { end, .. } => Some(end),
            Node::Seq(items) => items.last_mut().and_then(last_scalar),
            Node::Map(_) => None,
            Node::Other => None,
        }
    }
    let slot = match b.stack.last_mut() {
        None => b.docs.last_mut().and_then(last_scalar),
        Some((Node::Seq(items), _)) => items.last_mut().and_then(last_scalar),
        Some((Node::Map(pairs), pending)) => match pending {
            Some(key) => last_scalar(key),
            None => pairs.last_mut().and_then(|(_, v)| last_scalar(v)),
        },
        Some(_) => None,
    };
    if let Some(e) = slot {
        if *e == usize::MAX {
            *e = end;
        }
    }
}

fn parse(text: &str) -> Result<Vec<Node>> {
    let mut b = Builder::default();
    Parser::new_from_str(text)
        .load(&mut b, true)
        .map_err(|e| anyhow::anyhow!("the input is not valid YAML: {e}"))?;
    if let Some(e) = b.error {
        bail!("{e}");
    }
    Ok(b.docs)
}

/// What was changed, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `binaryPath` in `PROXY_CONFIG` JSON.
    pub proxy_config: usize,
    /// `binaryPath` in `proxy.istio.io/config` annotations.
    pub annotations: usize,
    /// Container `command`/`args` entries.
    pub args: usize,
    /// Occurrences of the envoy path left alone (outside those places), by line.
    pub untouched_lines: Vec<usize>,
}

impl Report {
    /// Total places changed.
    pub fn total(&self) -> usize {
        self.proxy_config + self.annotations + self.args
    }
}

fn get<'a>(pairs: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    pairs.iter().find_map(|(k, v)| match k {
        Node::Scalar { value, .. } if value == key => Some(v),
        _ => None,
    })
}

/// Byte offset of a char index (the parser counts chars).
fn byte_at(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map(|(b, _)| b)
        .unwrap_or(text.len())
}

/// Find `binaryPath` followed by the envoy path inside a scalar's source (JSON or YAML, in
/// any quoting style) and return the byte range of the path.
fn binary_path_range(src: &str, offset: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find("binaryPath") {
        let after = from + i + "binaryPath".len();
        let rest = &src[after..];
        let skip = rest
            .find(|c: char| !matches!(c, '"' | '\\' | ':' | ' ' | '\''))
            .unwrap_or(rest.len());
        if rest[skip..].starts_with(ENVOY) {
            out.push((offset + after + skip, offset + after + skip + ENVOY.len()));
        }
        from = after;
    }
    out
}

/// Rewrite `text`; returns the new text and what changed.
pub fn rewrite(text: &str) -> Result<(String, Report)> {
    let docs = parse(text)?;
    let mut edits: Vec<(usize, usize)> = Vec::new();
    let mut report = Report::default();
    for d in &docs {
        walk(d, text, &mut edits, &mut report)?;
    }
    edits.sort();
    edits.dedup();
    let mut out = text.to_string();
    for (s, e) in edits.iter().rev() {
        out.replace_range(*s..*e, MOSN);
    }
    // Parse again: still YAML, and every PROXY_CONFIG now names mosn.
    let mut check = Report::default();
    let mut none = Vec::new();
    for d in &parse(&out).context("the rewritten output does not parse (please report this)")? {
        walk(d, &out, &mut none, &mut check)?;
    }
    if !none.is_empty() {
        bail!(
            "{} envoy paths were still there after rewriting (please report this)",
            none.len()
        );
    }
    let changed: std::collections::HashSet<usize> = edits
        .iter()
        .map(|(s, _)| text[..*s].matches('\n').count() + 1)
        .collect();
    report.untouched_lines = text
        .lines()
        .enumerate()
        .filter(|(i, l)| l.contains(ENVOY) && !changed.contains(&(i + 1)))
        .map(|(i, _)| i + 1)
        .collect();
    Ok((out, report))
}

fn walk(
    node: &Node,
    text: &str,
    edits: &mut Vec<(usize, usize)>,
    report: &mut Report,
) -> Result<()> {
    match node {
        Node::Map(pairs) => {
            if let Some(Node::Seq(containers)) = get(pairs, "containers") {
                for c in containers {
                    if let Node::Map(c) = c {
                        container(c, text, edits, report)?;
                    }
                }
            }
            if let Some(Node::Map(ann)) = get(pairs, "annotations") {
                if let Some(Node::Scalar { value, start, end }) = get(ann, "proxy.istio.io/config")
                {
                    let cfg = yaml_rust2::YamlLoader::load_from_str(value).ok();
                    let bp = cfg
                        .as_ref()
                        .and_then(|c| c.first())
                        .and_then(|c| c["binaryPath"].as_str());
                    if bp == Some(ENVOY) {
                        let (s, e) = (byte_at(text, *start), byte_at(text, *end).min(text.len()));
                        let found = binary_path_range(&text[s..e], s);
                        report.annotations += found.len();
                        edits.extend(found);
                    }
                }
            }
            for (_, v) in pairs {
                walk(v, text, edits, report)?;
            }
        }
        Node::Seq(items) => {
            for i in items {
                walk(i, text, edits, report)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn container(
    c: &[(Node, Node)],
    text: &str,
    edits: &mut Vec<(usize, usize)>,
    report: &mut Report,
) -> Result<()> {
    if let Some(Node::Seq(env)) = get(c, "env") {
        for e in env {
            let Node::Map(e) = e else { continue };
            let is_pc = matches!(get(e, "name"), Some(Node::Scalar { value, .. }) if value == "PROXY_CONFIG");
            let Some(Node::Scalar { value, start, end }) = get(e, "value") else {
                continue;
            };
            if !is_pc {
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(value)
                .context("a PROXY_CONFIG env value is not JSON; is this kube-inject output?")?;
            if json.get("binaryPath").and_then(|v| v.as_str()) == Some(ENVOY) {
                let (s, e) = (byte_at(text, *start), byte_at(text, *end).min(text.len()));
                let found = binary_path_range(&text[s..e], s);
                if found.len() != 1 {
                    bail!("cannot locate binaryPath in the PROXY_CONFIG text at byte {s}");
                }
                report.proxy_config += 1;
                edits.extend(found);
            }
        }
    }
    for key in ["command", "args"] {
        if let Some(Node::Seq(items)) = get(c, key) {
            for item in items {
                let Node::Scalar { value, start, .. } = item else {
                    continue;
                };
                let in_value = if value == ENVOY {
                    Some(0)
                } else {
                    value
                        .strip_prefix("--binaryPath=")
                        .filter(|v| *v == ENVOY)
                        .map(|_| "--binaryPath=".len())
                };
                if let Some(skip) = in_value {
                    let s = byte_at(text, *start);
                    // Plain or quoted: the path starts at the value, after any quote.
                    let q = usize::from(text[s..].starts_with(['"', '\'']));
                    let p = s + q + skip;
                    if text[p..].starts_with(ENVOY) {
                        edits.push((p, p + ENVOY.len()));
                        report.args += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# kube-inject output
apiVersion: apps/v1
kind: Deployment
metadata:
  name: productpage   # ünïcode comment
  annotations:
    proxy.istio.io/config: |
      binaryPath: /usr/local/bin/envoy
spec:
  template:
    spec:
      containers:
      - name: app
        image: app:1
        args: ["--note", "/usr/local/bin/envoy is mentioned here"]
      - name: istio-proxy
        args:
        - proxy
        - sidecar
        - --binaryPath=/usr/local/bin/envoy
        env:
        - name: OTHER
          value: '{"binaryPath":"/usr/local/bin/envoy"}'
        - name: PROXY_CONFIG
          value: |
            {"proxyMetadata":{"DNS_AGENT":""},"binaryPath":"/usr/local/bin/envoy","concurrency":2}
---
apiVersion: v1
kind: Service
metadata:
  name: svc
"#;

    #[test]
    fn rewrites_only_the_sidecar_places() {
        let (out, r) = rewrite(SAMPLE).unwrap();
        assert_eq!((r.proxy_config, r.annotations, r.args), (1, 1, 1), "{out}");
        assert!(out.contains(r#""binaryPath":"/usr/local/bin/mosn","concurrency":2}"#));
        assert!(out.contains("--binaryPath=/usr/local/bin/mosn"));
        assert!(out.contains("binaryPath: /usr/local/bin/mosn"));
        // Unrelated text stays, comments and all.
        assert!(out.contains(r#"value: '{"binaryPath":"/usr/local/bin/envoy"}'"#));
        assert!(out.contains("/usr/local/bin/envoy is mentioned here"));
        assert!(out.contains("# ünïcode comment"));
        assert_eq!(out.len(), SAMPLE.len() - 3);
        assert_eq!(r.untouched_lines.len(), 2);
        // Idempotent.
        let (again, r2) = rewrite(&out).unwrap();
        assert_eq!(again, out);
        assert_eq!(r2.total(), 0);
    }

    #[test]
    fn double_quoted_json_and_flow_style() {
        let src = "spec:\n  containers: [{name: istio-proxy, env: [{name: PROXY_CONFIG, value: \"{\\\"binaryPath\\\":\\\"/usr/local/bin/envoy\\\"}\"}]}]\n";
        let (out, r) = rewrite(src).unwrap();
        assert_eq!(r.proxy_config, 1, "{out}");
        assert!(out.contains("/usr/local/bin/mosn"));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(rewrite("a: [unclosed").is_err());
        assert!(rewrite(
            "spec:\n  containers:\n  - env:\n    - name: PROXY_CONFIG\n      value: not json\n"
        )
        .is_err());
    }
}
