//! Docker answers a pull with a stream of JSON lines, one per layer event, and reports a
//! failure as one of those lines even after a `200`. This reads the stream a line at a
//! time in bounded memory, sums the layers' progress, and finds that error line. Pure
//! apart from the reader, so it is tested without Docker.

use super::PullProgress;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};

/// Longer progress lines are skipped unread: Docker's are a few hundred bytes.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// `fromImage` and `tag` for `POST /images/create`: the digest after `@`, else the tag
/// after the last `:` that follows the last `/` (a registry port is not a tag), else
/// `latest` (without any, Docker would pull every tag of the repository).
pub(super) fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (strip_tag(name), digest);
    }
    match tag_start(image) {
        Some(colon) => (&image[..colon], &image[colon + 1..]),
        None => (image, "latest"),
    }
}

fn strip_tag(name: &str) -> &str {
    tag_start(name).map_or(name, |colon| &name[..colon])
}

fn tag_start(name: &str) -> Option<usize> {
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    name[last_slash..].rfind(':').map(|i| last_slash + i)
}

/// Why a pull stream did not end well.
#[derive(Debug)]
pub(super) enum StreamError {
    /// The connection failed or went idle too long.
    Read(io::Error),
    /// Docker reported a failure in the stream (`error`/`errorDetail`).
    Docker(String),
}

/// Reads the stream to its end, calling `progress` whenever the percentage changes.
pub(super) fn follow(mut reader: impl BufRead, progress: &mut dyn FnMut(PullProgress)) -> Result<(), StreamError> {
    let mut tracker = PullTracker::default();
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line).map_err(StreamError::Read)?;
        if read == 0 {
            return Ok(());
        }
        if read as u64 == MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            log::debug!("skipping a pull progress line longer than {MAX_LINE_BYTES} bytes");
            reader.skip_until(b'\n').map_err(StreamError::Read)?;
            continue;
        }
        let Ok(event) = serde_json::from_slice::<Value>(&line) else {
            continue; // blank or not JSON: nothing to learn from it
        };
        if let Some(changed) = tracker.observe(&event).map_err(StreamError::Docker)? {
            progress(changed);
        }
    }
}

#[derive(Debug, Default)]
struct Layer {
    current: u64,
    total: u64,
    complete: bool,
}

/// Per-layer progress by layer id, and the percentage last reported.
#[derive(Debug, Default)]
struct PullTracker {
    layers: BTreeMap<String, Layer>,
    reported: Option<u8>,
}

impl PullTracker {
    /// Takes one event; `Err` with Docker's message on an error event, `Ok(Some)` when the
    /// summed percentage moved.
    fn observe(&mut self, event: &Value) -> Result<Option<PullProgress>, String> {
        if let Some(message) = error_message(event) {
            return Err(message);
        }
        let (Some(id), Some(status)) = (event["id"].as_str(), event["status"].as_str()) else {
            return Ok(None);
        };
        match status {
            "Downloading" => {
                let detail = &event["progressDetail"];
                let layer = self.layers.entry(id.to_string()).or_default();
                layer.current = detail["current"].as_u64().unwrap_or(layer.current);
                layer.total = detail["total"].as_u64().unwrap_or(layer.total);
            }
            "Download complete" | "Pull complete" | "Already exists" => {
                self.layers.entry(id.to_string()).or_default().complete = true;
            }
            _ => return Ok(None),
        }
        let summed = self.summed();
        let percent = summed.percent();
        if percent.is_none() || percent == self.reported {
            return Ok(None);
        }
        self.reported = percent;
        Ok(Some(summed))
    }

    fn summed(&self) -> PullProgress {
        let mut sum = PullProgress::default();
        for layer in self.layers.values() {
            let done = if layer.complete { layer.total } else { layer.current.min(layer.total) };
            sum.downloaded = sum.downloaded.saturating_add(done);
            sum.total = sum.total.saturating_add(layer.total);
        }
        sum
    }
}

/// Docker's failure line: `{"errorDetail": {"message": …}, "error": …}`.
fn error_message(event: &Value) -> Option<String> {
    let detail = event["errorDetail"]["message"].as_str();
    let error = event["error"].as_str();
    match (detail, error) {
        (Some(message), _) | (None, Some(message)) => Some(message.to_string()),
        (None, None) if !event["errorDetail"].is_null() => Some(event["errorDetail"].to_string()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reference_keeps_registry_port_and_finds_tag_or_digest() {
        let digest = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
        let cases = [
            ("nginx", ("nginx", "latest")),
            ("nginx:1.25", ("nginx", "1.25")),
            ("127.0.0.1:5000/demo/app", ("127.0.0.1:5000/demo/app", "latest")),
            ("127.0.0.1:5000/demo/app:v2", ("127.0.0.1:5000/demo/app", "v2")),
            (&*format!("127.0.0.1:5000/demo/app@{digest}"), ("127.0.0.1:5000/demo/app", digest)),
            (&*format!("localhost:5000/app:v1@{digest}"), ("localhost:5000/app", digest)),
        ];
        for (image, expected) in cases {
            assert_eq!(split_reference(image), expected, "{image}");
        }
    }

    fn run(stream: &str) -> (Result<(), StreamError>, Vec<PullProgress>) {
        let mut seen = Vec::new();
        let result = follow(stream.as_bytes(), &mut |p| seen.push(p));
        (result, seen)
    }

    #[test]
    fn progress_is_summed_over_layers_and_reported_when_the_percent_moves() {
        let stream = r#"{"status":"Pulling from demo/app","id":"v1"}
{"status":"Pulling fs layer","progressDetail":{},"id":"a"}
{"status":"Downloading","progressDetail":{"current":50,"total":100},"id":"a"}
{"status":"Downloading","progressDetail":{"current":50,"total":100},"id":"a"}
{"status":"Downloading","progressDetail":{"current":100,"total":300},"id":"b"}
{"status":"Download complete","progressDetail":{},"id":"a"}
{"status":"Already exists","progressDetail":{},"id":"c"}
{"status":"Pull complete","progressDetail":{},"id":"b"}
{"status":"Status: Downloaded newer image for demo/app:v1"}
"#;
        let (result, seen) = run(stream);
        assert!(result.is_ok());
        let pairs: Vec<_> = seen.iter().map(|p| (p.downloaded, p.total)).collect();
        assert_eq!(pairs, [(50, 100), (150, 400), (200, 400), (400, 400)]);
    }

    #[test]
    fn error_line_after_200_is_a_failure_with_dockers_message() {
        let stream = "{\"status\":\"Pulling from demo/app\",\"id\":\"v1\"}\n\
            {\"errorDetail\":{\"message\":\"manifest unknown\"},\"error\":\"manifest unknown\"}\n";
        let (result, _) = run(stream);
        assert!(matches!(result, Err(StreamError::Docker(m)) if m == "manifest unknown"));
    }

    #[test]
    fn garbage_and_overlong_lines_are_skipped() {
        let long = "x".repeat(MAX_LINE_BYTES as usize * 2);
        let stream = format!(
            "not json\n{long}\n[1,2]\n{{\"status\":\"Downloading\",\"progressDetail\":{{\"current\":\"?\",\"total\":-1}},\"id\":\"a\"}}\n\
             {{\"status\":\"Downloading\",\"progressDetail\":{{\"current\":1,\"total\":2}},\"id\":\"a\"}}"
        );
        let (result, seen) = run(&stream);
        assert!(result.is_ok());
        assert_eq!(seen, [PullProgress { downloaded: 1, total: 2 }]);
    }
}
