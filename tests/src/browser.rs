//! A real headless Chromium for the dashboard tests, driven as a user would drive it:
//! Debian's `chromium` through Debian's `chromedriver` (package `chromium-driver`) over the
//! W3C WebDriver HTTP protocol, spoken here with `ureq` and `serde_json` — no WebDriver
//! crate, no Node, nothing fetched. `Browser::start` runs chromedriver on a free loopback
//! port (killed on drop, with the browser it started), opens one session with a profile
//! in a temp dir, and offers the few verbs a page test needs: go to a URL, find and wait
//! for CSS selectors, click, type, pick an option, read text and attributes, run a
//! script, take a screenshot, resize the window, read cookies. Waiting polls a condition
//! (never a fixed sleep); a wait that times out panics with what the operator would see —
//! the page's URL, the `#view` text, the browser's console (CSP violations and script
//! errors land there) and a screenshot when a failure directory is set. Without chromium
//! or chromedriver every test using this fails, saying which packages bring them.

use crate::util::{base64_std_decode, free_port, tail_of_file, wait_for, TempDir};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a click, a typing or a read by selector waits for its element to be there.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(15);
/// How often a wait asks the browser again.
const POLL: Duration = Duration::from_millis(50);
/// How long chromedriver may take to answer `/status` once started.
const DRIVER_STARTUP: Duration = Duration::from_secs(20);
/// The W3C name of the key that carries an element's id in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What the test needs and where Debian puts it.
const INSTALL_HINT: &str = "install them: apt-get install chromium chromium-driver (scripts/test does)";

/// A WebDriver error answer (`{"value": {"error": …, "message": …}}`).
#[derive(Debug, Clone)]
pub struct WebDriverError {
    pub status: u16,
    /// The W3C error code: `no such element`, `stale element reference`, …
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // chromedriver's messages end in a long native stack; its first lines say it all.
        let message: String = self.message.lines().take(3).collect::<Vec<_>>().join(" | ");
        write!(f, "HTTP {} {}: {message}", self.status, self.error)
    }
}

impl WebDriverError {
    /// An element that went away or is not ready yet: worth finding again and retrying.
    fn is_transient(&self) -> bool {
        matches!(
            self.error.as_str(),
            "no such element"
                | "stale element reference"
                | "element not interactable"
                | "element click intercepted"
                | "invalid element state"
        )
    }
}

/// One headless Chromium session behind its own chromedriver.
pub struct Browser {
    driver: Option<Child>,
    port: u16,
    session: String,
    http: ureq::Agent,
    /// Browser console lines read so far (reading the log drains it in chromedriver).
    console: RefCell<Vec<String>>,
    failure_dir: Option<PathBuf>,
    failures: Cell<usize>,
    dir: TempDir,
}

/// An element found in the page, by the selector that found it (for messages).
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
    css: String,
}

/// `name` on PATH, or in /usr/bin.
fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    let found = path
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found
}

/// `"…"` for a CSS attribute selector.
pub fn css_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\a "),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session
    /// (1280×900 window). Panics, saying how to install them, when either is missing.
    pub fn start() -> Browser {
        let (Some(chromium), Some(chromedriver)) = (find_executable("chromium"), find_executable("chromedriver"))
        else {
            panic!(
                "the dashboard tests drive a real headless Chromium: `chromium` and `chromedriver` must be on PATH; \
                 {INSTALL_HINT}"
            );
        };
        let dir = TempDir::new("browser");
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .new_agent();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log_path = dir.join("chromedriver.log");
            let log = std::fs::File::create(&log_path).expect("creating the chromedriver log");
            let mut child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log_path.display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log handle"))
                .stderr(log)
                // Its own process group, so that whatever it started goes with it on drop.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}; {INSTALL_HINT}", chromedriver.display()));
            let status_url = format!("http://127.0.0.1:{port}/status");
            let ready = wait_for(DRIVER_STARTUP, || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(format!("chromedriver exited with {status}")));
                }
                let mut response = http.get(&status_url).call().ok()?;
                let body: Value = serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
                (body["value"]["ready"] == true).then_some(Ok(()))
            });
            match ready {
                Some(Ok(())) => {
                    let mut browser = Browser {
                        driver: Some(child),
                        port,
                        session: String::new(),
                        http,
                        console: RefCell::new(Vec::new()),
                        failure_dir: None,
                        failures: Cell::new(0),
                        dir,
                    };
                    browser.open_session(&chromium);
                    return browser;
                }
                Some(Err(why)) => {
                    let _ = child.wait();
                    last = format!("{why}; its log:\n{}", tail_of_file(&log_path, 4000));
                    if !last.to_ascii_lowercase().contains("address already in use") && !last.contains("bind() failed")
                    {
                        panic!("{last}");
                    }
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "chromedriver did not answer {status_url} within {DRIVER_STARTUP:?}; its log:\n{}",
                        tail_of_file(&log_path, 4000)
                    );
                }
            }
        }
        panic!("chromedriver could not bind a free loopback port in 5 attempts: {last}");
    }

    fn open_session(&mut self, chromium: &Path) {
        let profile = self.dir.join("profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
            // Loopback only: no proxy from the environment, no background fetches.
            "--no-proxy-server".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--no-first-run".into(),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 30_000, "pageLoad": 30_000, "implicit": 0},
        }}});
        let url = format!("http://127.0.0.1:{}/session", self.port);
        let answer = self
            .send("POST", &url, Some(&capabilities))
            .unwrap_or_else(|e| panic!("chromedriver could not start Chromium ({e}); its log:\n{}", self.driver_log()));
        self.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in chromedriver's answer {answer}"))
            .to_string();
    }

    /// Every wait that times out from now on saves a screenshot `failure-N.png` in `dir`.
    pub fn set_failure_dir(&mut self, dir: &Path) {
        self.failure_dir = Some(dir.to_path_buf());
    }

    /// The tail of chromedriver's own log.
    pub fn driver_log(&self) -> String {
        tail_of_file(&self.dir.join("chromedriver.log"), 6000)
    }

    /// One HTTP exchange with chromedriver; the answer's `value`, or its error.
    fn send(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, WebDriverError> {
        let builder = ureq::http::Request::builder().method(method).uri(url);
        let result = match body {
            Some(body) => self
                .http
                .run(builder.header("Content-Type", "application/json").body(body.to_string()).expect("valid request")),
            None if method == "POST" => self
                .http
                .run(builder.header("Content-Type", "application/json").body("{}".to_string()).expect("valid request")),
            None => self.http.run(builder.body(()).expect("valid request")),
        };
        let mut response = result.unwrap_or_else(|e| {
            panic!("{method} {url}: chromedriver did not answer ({e}); its log:\n{}", self.driver_log())
        });
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_else(|e| panic!("{method} {url}: reading chromedriver's answer: {e}"));
        let mut answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: chromedriver's answer is not JSON ({e}): {text}"));
        let value = answer.get_mut("value").map(Value::take).unwrap_or(Value::Null);
        if status == 200 {
            return Ok(value);
        }
        Err(WebDriverError {
            status,
            error: value["error"].as_str().unwrap_or("unknown error").to_string(),
            message: value["message"].as_str().unwrap_or(&text).to_string(),
        })
    }

    /// A command of this session (`path` after `/session/{id}`).
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let url = format!("http://127.0.0.1:{}/session/{}{path}", self.port, self.session);
        self.send(method, &url, body.as_ref())
    }

    /// `command`, panicking with the diagnostics on an error.
    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}\n{}", self.diagnostics()))
    }

    /// Loads `url` and waits for the load event.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({"url": url})));
    }

    /// The page's current URL.
    pub fn url(&self) -> String {
        self.must("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// Reloads the page.
    pub fn refresh(&self) {
        self.must("POST", "/refresh", None);
    }

    fn element_from(&self, value: &Value, css: &str) -> Element<'_> {
        let id = value[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element id in {value}")).to_string();
        Element { browser: self, id, css: css.to_string() }
    }

    /// The first element matching `css`, if there is one now.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        match self.command("POST", "/element", Some(json!({"using": "css selector", "value": css}))) {
            Ok(value) => Some(self.element_from(&value, css)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("finding {css}: {e}\n{}", self.diagnostics()),
        }
    }

    /// The first element matching `css`; panics (with the diagnostics) if there is none now.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| panic!("no element matches {css}\n{}", self.diagnostics()))
    }

    /// Every element matching `css` now, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let list = self.must("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        list.as_array().map(|l| l.iter().map(|v| self.element_from(v, css)).collect()).unwrap_or_default()
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.find_all(css).len()
    }

    /// Polls `check` until it returns `Some`; panics with `what` and the diagnostics (the
    /// page, its `#view`, the console, a screenshot) if it does not within `timeout`.
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if start.elapsed() >= timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until an element matching `css` is in the page and displayed; returns it.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        self.wait_until(&format!("{css} to be displayed"), timeout, || {
            self.find_all(css).into_iter().find(|e| e.is_displayed().unwrap_or(false))
        })
    }

    /// Waits until an element matching `css` shows text containing `needle`; returns it.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> Element<'_> {
        let mut seen = Vec::new();
        let what = format!("{css} to show {needle:?}");
        let found = wait_for(timeout, || {
            seen.clear();
            for element in self.find_all(css) {
                match element.text() {
                    Ok(text) if text.contains(needle) => return Some(element),
                    Ok(text) => seen.push(text),
                    Err(_) => {}
                }
            }
            None
        });
        found.unwrap_or_else(|| {
            panic!("timed out after {timeout:?} waiting for {what}; it showed {seen:?}\n{}", self.diagnostics())
        })
    }

    /// Finds `css` (waiting up to `DEFAULT_WAIT`) and runs `act` on it, finding it again
    /// when the page re-rendered it in between (a stale or not yet interactable element).
    fn with_element<T>(&self, css: &str, what: &str, act: impl Fn(&Element) -> Result<T, WebDriverError>) -> T {
        let mut last = None;
        let result = wait_for(DEFAULT_WAIT, || {
            let element = self.try_find(css)?;
            match act(&element) {
                Ok(v) => Some(Ok(v)),
                Err(e) if e.is_transient() => {
                    last = Some(e);
                    None
                }
                Err(e) => Some(Err(e)),
            }
        });
        match result {
            Some(Ok(v)) => v,
            Some(Err(e)) => panic!("{what} {css}: {e}\n{}", self.diagnostics()),
            None => panic!(
                "{what} {css}: not possible within {DEFAULT_WAIT:?} (last: {})\n{}",
                last.map_or_else(|| "no such element".to_string(), |e| e.to_string()),
                self.diagnostics()
            ),
        }
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        self.with_element(css, "clicking", |e| e.try_click());
    }

    /// Types `text` into the element matching `css` (after what it holds).
    pub fn type_text(&self, css: &str, text: &str) {
        self.with_element(css, "typing into", |e| e.try_type_text(text));
    }

    /// Empties the input or textarea matching `css`.
    pub fn clear(&self, css: &str) {
        self.with_element(css, "clearing", |e| e.try_clear());
    }

    /// `clear`, then `type_text`.
    pub fn fill(&self, css: &str, text: &str) {
        self.with_element(css, "filling", |e| {
            e.try_clear()?;
            e.try_type_text(text)
        });
    }

    /// The rendered text of the element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.with_element(css, "reading the text of", |e| e.text())
    }

    /// An attribute of the element matching `css`.
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.with_element(css, "reading an attribute of", |e| e.attribute(name))
    }

    /// Picks the `<option value="value">` of the `<select>` matching `css` as a keyboard
    /// user does, typing its label into the focused select (the page sees `input` and
    /// `change`, as from a person; chromedriver's click on an `<option>` fires `change`
    /// only), and checks the select took it.
    pub fn select_option(&self, css: &str, value: &str) {
        let option = format!("option[value={}]", css_string(value));
        self.with_element(css, "choosing an option of", |select| {
            let label = select.find(&option)?.property("text")?;
            select.try_type_text(label.as_str().unwrap_or_default())?;
            match select.property("value")? {
                Value::String(now) if now == value => Ok(()),
                other => Err(WebDriverError {
                    status: 0,
                    error: "invalid element state".into(),
                    message: format!("the select's value is {other} after clicking {option}"),
                }),
            }
        });
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.must("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Runs `script` in the page and waits for it to call its last argument (the callback)
    /// with the result.
    pub fn execute_async(&self, script: &str, args: &[Value]) -> Value {
        self.must("POST", "/execute/async", Some(json!({"script": script, "args": args})))
    }

    /// The viewport as a PNG (the bytes), decoded from WebDriver's base64.
    pub fn screenshot_png(&self) -> Vec<u8> {
        let encoded = self.must("GET", "/screenshot", None);
        let png = base64_std_decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("the screenshot is not base64"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot is not a PNG ({} bytes)", png.len());
        png
    }

    /// Writes the viewport as a PNG to `path` (its directory made if needed).
    pub fn screenshot(&self, path: &Path) {
        let png = self.screenshot_png();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Resizes the browser window (outer size; the page's viewport is what is left).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.must("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// The cookies the page's origin has, HttpOnly ones included (`name`, `value`,
    /// `httpOnly`, `sameSite`, …).
    pub fn cookies(&self) -> Vec<Value> {
        self.must("GET", "/cookie", None).as_array().cloned().unwrap_or_default()
    }

    /// The cookie `name` of the page's origin, if set.
    pub fn cookie(&self, name: &str) -> Option<Value> {
        self.cookies().into_iter().find(|c| c["name"] == name)
    }

    /// Deletes every cookie of the page's origin.
    pub fn delete_cookies(&self) {
        self.must("DELETE", "/cookie", None);
    }

    /// Every browser console line so far (`LEVEL message`): console calls, script
    /// errors, CSP violations, failed loads.
    pub fn console(&self) -> Vec<String> {
        match self.command("POST", "/se/log", Some(json!({"type": "browser"}))) {
            Ok(Value::Array(entries)) => {
                let mut console = self.console.borrow_mut();
                for entry in entries {
                    let level = entry["level"].as_str().unwrap_or("?");
                    let message = entry["message"].as_str().unwrap_or_default();
                    console.push(format!("{level} {message}"));
                }
            }
            Ok(other) => self.console.borrow_mut().push(format!("(the browser log answered {other})")),
            Err(e) => self.console.borrow_mut().push(format!("(the browser log is not readable: {e})")),
        }
        self.console.borrow().clone()
    }

    /// What a failure message shows: the URL, the `#view` (its `data-view` and text), the
    /// console, and a screenshot's path when a failure directory is set.
    pub fn diagnostics(&self) -> String {
        let url = self.command("GET", "/url", None).map(|v| v.to_string()).unwrap_or_else(|e| e.to_string());
        let view = self
            .command(
                "POST",
                "/execute/sync",
                Some(json!({"script": "const v = document.querySelector('#view'); \
                     return v ? [v.getAttribute('data-view'), v.innerText] : null", "args": []})),
            )
            .map(|v| match v {
                Value::Array(parts) => {
                    format!("data-view={} text:\n{}", parts[0], truncate(parts[1].as_str().unwrap_or_default(), 4000))
                }
                _ => "(no #view in the page)".to_string(),
            })
            .unwrap_or_else(|e| format!("(could not read #view: {e})"));
        let console = self.console();
        let console = truncate(&console[console.len().saturating_sub(40)..].join("\n"), 6000);
        let mut shot = String::new();
        if let Some(dir) = &self.failure_dir {
            let n = self.failures.get() + 1;
            self.failures.set(n);
            let path = dir.join(format!("failure-{n}.png"));
            let saved = self.command("GET", "/screenshot", None).ok().and_then(|v| base64_std_decode(v.as_str()?));
            shot = match saved.map(|png| {
                std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, png)).map_err(|e| e.to_string())
            }) {
                Some(Ok(())) => format!("\nscreenshot: {}", path.display()),
                Some(Err(e)) => format!("\n(screenshot not saved: {e})"),
                None => "\n(no screenshot)".to_string(),
            };
        }
        format!("page: {url}\n#view {view}\nbrowser console (last 40 lines):\n{console}{shot}")
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &text[..end], text.len() - end)
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium the way chromedriver knows; the group kill below is for the rest.
            let url = format!("http://127.0.0.1:{}/session/{}", self.port, self.session);
            let _ = self.http.delete(&url).call();
        }
        if let Some(mut child) = self.driver.take() {
            // SAFETY: kill(2) on the process group we created for chromedriver (its pid).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl<'a> Element<'a> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    /// The selector that found it.
    pub fn selector(&self) -> &str {
        &self.css
    }

    /// The first descendant matching `css`.
    pub fn find(&self, css: &str) -> Result<Element<'a>, WebDriverError> {
        let value = self.browser.command(
            "POST",
            &self.path("/element"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(self.browser.element_from(&value, &format!("{} {css}", self.css)))
    }

    /// Every descendant matching `css`.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'a>>, WebDriverError> {
        let list = self.browser.command(
            "POST",
            &self.path("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        )?;
        let selector = format!("{} {css}", self.css);
        Ok(list
            .as_array()
            .map(|l| l.iter().map(|v| self.browser.element_from(v, &selector)).collect())
            .unwrap_or_default())
    }

    pub fn try_click(&self) -> Result<(), WebDriverError> {
        self.browser.command("POST", &self.path("/click"), None).map(drop)
    }

    pub fn try_type_text(&self, text: &str) -> Result<(), WebDriverError> {
        self.browser.command("POST", &self.path("/value"), Some(json!({"text": text}))).map(drop)
    }

    pub fn try_clear(&self) -> Result<(), WebDriverError> {
        self.browser.command("POST", &self.path("/clear"), None).map(drop)
    }

    /// Clicks it; panics with the diagnostics if it cannot be clicked.
    pub fn click(&self) {
        self.try_click().unwrap_or_else(|e| panic!("clicking {}: {e}\n{}", self.css, self.browser.diagnostics()));
    }

    /// Types `text` into it; panics with the diagnostics if it takes no text.
    pub fn type_text(&self, text: &str) {
        self.try_type_text(text)
            .unwrap_or_else(|e| panic!("typing into {}: {e}\n{}", self.css, self.browser.diagnostics()));
    }

    /// Empties it (an input or textarea).
    pub fn clear(&self) {
        self.try_clear().unwrap_or_else(|e| panic!("clearing {}: {e}\n{}", self.css, self.browser.diagnostics()));
    }

    /// Its rendered text (what a reader sees: nothing of hidden elements).
    pub fn text(&self) -> Result<String, WebDriverError> {
        Ok(self.browser.command("GET", &self.path("/text"), None)?.as_str().unwrap_or_default().to_string())
    }

    /// An attribute as written in the DOM (`None` when absent).
    pub fn attribute(&self, name: &str) -> Result<Option<String>, WebDriverError> {
        Ok(self.browser.command("GET", &self.path(&format!("/attribute/{name}")), None)?.as_str().map(str::to_string))
    }

    /// A DOM property (`value`, `checked`, …).
    pub fn property(&self, name: &str) -> Result<Value, WebDriverError> {
        self.browser.command("GET", &self.path(&format!("/property/{name}")), None)
    }

    /// Whether it is displayed (not hidden, not inside a hidden parent).
    pub fn is_displayed(&self) -> Result<bool, WebDriverError> {
        Ok(self.browser.command("GET", &self.path("/displayed"), None)? == true)
    }
}

#[cfg(test)]
mod tests {
    //! The harness against a page of its own (tiny_http on loopback, the dashboard's CSP),
    //! so that it is proven before any dashboard page exists.
    use super::*;
    use std::sync::Arc;

    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

    const PAGE: &str = r#"<!doctype html>
<html><head><title>harness</title><script src="/app.js" defer></script></head>
<body><main id="view" data-view="start">
<p>start view</p>
<input id="name"><select id="color"><option value="red">Red</option><option value="blue">Blue</option></select>
<button id="go">go</button><p id="chosen"></p><p id="out"></p><p id="hidden" hidden>hidden text</p>
</main><script>window.__inline = 1;</script></body></html>"#;

    const SCRIPT: &str = r#"
// A person's choice fires input, then change: the page needs both.
let inputs = 0;
document.getElementById('color').addEventListener('input', () => { inputs += 1; });
document.getElementById('color').addEventListener('change', (e) => {
  document.getElementById('chosen').textContent = 'chose ' + e.target.value + ' after ' + inputs + ' input';
});
document.getElementById('go').addEventListener('click', () => {
  const name = document.getElementById('name').value;
  const color = document.getElementById('color').value;
  console.error('from the app: go');
  // Later, as an answer from a server would come: a wait must poll for it.
  setTimeout(() => {
    const out = document.getElementById('out');
    out.textContent = 'hello ' + name + ' in ' + color;
    out.setAttribute('data-done', 'yes');
  }, 400);
});
"#;

    /// A page server on 127.0.0.1 for the harness's own tests.
    struct PageServer {
        server: Arc<tiny_http::Server>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl PageServer {
        fn start() -> PageServer {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding a page server"));
            let thread = {
                let server = Arc::clone(&server);
                std::thread::spawn(move || {
                    for request in server.incoming_requests() {
                        let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k, v).unwrap();
                        let response = match request.url() {
                            "/" => tiny_http::Response::from_string(PAGE)
                                .with_header(header("Content-Type", "text/html; charset=utf-8"))
                                .with_header(header("Content-Security-Policy", CSP))
                                .with_header(header("Set-Cookie", "session=s3cret; HttpOnly; SameSite=Strict; Path=/")),
                            "/app.js" => tiny_http::Response::from_string(SCRIPT)
                                .with_header(header("Content-Type", "text/javascript")),
                            _ => tiny_http::Response::from_string("not found").with_status_code(404),
                        };
                        let _ = request.respond(response);
                    }
                })
            };
            PageServer { server, thread: Some(thread) }
        }

        fn url(&self) -> String {
            format!("http://{}/", self.server.server_addr().to_ip().unwrap())
        }
    }

    impl Drop for PageServer {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Width and height from a PNG's IHDR chunk.
    fn png_size(png: &[u8]) -> (u32, u32) {
        assert_eq!(&png[12..16], b"IHDR", "a PNG starts with IHDR");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&png[16..20]), be(&png[20..24]))
    }

    #[test]
    fn drives_a_page_with_the_dashboards_csp() {
        let pages = PageServer::start();
        let browser = Browser::start();
        browser.goto(&pages.url());
        assert_eq!(browser.url(), pages.url());
        assert_eq!(browser.wait_for("#view", DEFAULT_WAIT).attribute("data-view").unwrap().as_deref(), Some("start"));

        // Typing, choosing, clicking; the answer comes 400 ms later and is waited for.
        browser.type_text("#name", "Ada <b>");
        browser.select_option("#color", "blue");
        assert_eq!(browser.text("#chosen"), "chose blue after 1 input", "the page saw input and change");
        assert!(browser.try_find("#out[data-done]").is_none());
        browser.click("#go");
        let out = browser.wait_for_text("#out", "hello", Duration::from_secs(10));
        assert_eq!(out.text().unwrap(), "hello Ada <b> in blue");
        assert_eq!(browser.attribute("#out", "data-done").as_deref(), Some("yes"));
        browser.fill("#name", "Grace");
        assert_eq!(browser.find("#name").property("value").unwrap(), "Grace");

        // Hidden text is not displayed, and not waited for as if it were.
        assert_eq!(browser.find("#hidden").text().unwrap(), "");
        assert!(!browser.find("#hidden").is_displayed().unwrap());
        assert_eq!(browser.count("#view p"), 4);

        // Scripts run in the page; the inline one was refused by the CSP, and the console
        // says so, beside the app's own line.
        assert_eq!(browser.execute("return arguments[0] + 1", &[json!(41)]), json!(42));
        assert_eq!(browser.execute("return typeof window.__inline", &[]), "undefined");
        let fetched = browser.execute_async(
            "const done = arguments[arguments.length - 1]; fetch('/nowhere').then(r => done(r.status));",
            &[],
        );
        assert_eq!(fetched, 404);
        let console = browser.console().join("\n");
        assert!(console.contains("from the app: go"), "{console}");
        assert!(console.contains("Content Security Policy"), "the refused inline script is in the console: {console}");

        // Screenshots are the viewport, as PNG.
        let png = browser.screenshot_png();
        let viewport = browser.execute("return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio]", &[]);
        let (w, h) = png_size(&png);
        assert_eq!(json!([w, h]), viewport, "the screenshot's size is the viewport's");
        assert_eq!(w, 1280);
        let dir = TempDir::new("screens");
        let path = dir.join("nested/page.png");
        browser.screenshot(&path);
        assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));

        // A phone's width.
        browser.set_window_size(390, 844);
        assert_eq!(browser.execute("return innerWidth", &[]), 390);

        // The HttpOnly cookie is visible to the driver (not to the page), and deletable.
        let cookie = browser.cookie("session").expect("the session cookie");
        assert_eq!((cookie["value"].as_str(), cookie["httpOnly"].as_bool()), (Some("s3cret"), Some(true)));
        assert_eq!(browser.execute("return document.cookie", &[]), "");
        browser.delete_cookies();
        assert!(browser.cookies().is_empty());
    }

    #[test]
    fn a_wait_that_times_out_says_what_the_page_showed() {
        let pages = PageServer::start();
        let mut browser = Browser::start();
        let failures = TempDir::new("failures");
        browser.set_failure_dir(failures.path());
        browser.goto(&pages.url());
        browser.click("#go");
        browser.wait_for("#out[data-done]", DEFAULT_WAIT);
        let started = Instant::now();
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            browser.wait_for("#never", Duration::from_millis(300));
        }))
        .expect_err("waiting for a missing element panics");
        assert!(started.elapsed() < Duration::from_secs(10), "the wait ended near its timeout");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        for expected in [
            "#never to be displayed".to_string(),
            pages.url(),
            "data-view=\"start\"".into(),
            "start view".into(),
            "from the app: go".into(),
            failures.join("failure-1.png").display().to_string(),
        ] {
            assert!(message.contains(&expected), "the message names {expected:?}:\n{message}");
        }
        assert!(std::fs::read(failures.join("failure-1.png")).unwrap().starts_with(b"\x89PNG"));
    }
}
