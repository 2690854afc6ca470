//! The web page in Debian's headless Chromium: a real file chosen through the page's file input
//! (driven over WebDriver by Debian's chromedriver) is uploaded and the result grid shows the
//! thumbnails the server returns for it; and the "more like this" link (`/?query=/images/{id}`:
//! fetch the thumbnail, POST it to /search as a multipart upload) renders the grid; and the
//! page's "Evaluate" button runs an evaluation job and shows its table and plots.
//! Needs /usr/bin/chromium and /usr/bin/chromedriver (`scripts/setup.sh --with-test-tools`).

mod server_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashsrv::server::routes::SearchResponse;
use serde_json::{Value, json};
use server_support::*;

/// Headless Chromium as root on a machine with a closed network: without the background
/// networking flags it tries Google's hosts at every start, and those connections are refused.
const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Chromium is needed for the page test: run scripts/setup.sh --with-test-tools")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_result_grid() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let server = start(Arc::clone(&state)).await;
    let addr = server.addr;

    let id = state.current().index.id(2);
    let url = format!("http://{addr}/?query=/images/{id}");
    let profile = tempfile::tempdir().unwrap();
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(chromium())
            .args(CHROMIUM_FLAGS)
            // Let the page's fetches finish before the DOM is dumped.
            .args(["--virtual-time-budget=15000", "--dump-dom"])
            .arg(profile_arg)
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));

    // Default k on the page is 12; the index holds 15 items.
    let hits: Vec<&str> = dom.match_indices("<figure class=\"hit\"").map(|(i, _)| &dom[i..]).collect();
    assert_eq!(hits.len(), 12, "rendered DOM:\n{dom}");
    let loaded = state.current();
    let mut last_distance = 0;
    for (rank, hit) in hits.iter().enumerate() {
        let attr = |name: &str| -> u64 {
            let start = hit.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            hit[start..][..hit[start..].find('"').unwrap()].parse().unwrap()
        };
        let hit_id = attr("data-id");
        let position = loaded.position(hit_id).expect("every thumbnail is an index item");
        let distance = attr("data-distance");
        assert!(distance >= last_distance, "results are sorted by distance");
        last_distance = distance;
        assert!(hit.contains(&format!("src=\"/images/{hit_id}\"")));
        let class = &loaded.class_names[loaded.index.labels()[position] as usize];
        let caption = format!("#{} · d={distance} · {class}", rank + 1);
        assert!(hit[..hit.find("</figure>").unwrap()].contains(&caption), "{caption} not in {hit:.300}");
    }
    assert!(dom.contains("results for code"), "status line missing:\n{dom}");
    assert!(dom.contains("alt=\"query\""), "the query image is shown");
    // Chromium's own requests went through the real routes.
    let metrics = state.metrics.render();
    assert!(metrics.contains("hashsrv_requests_total{route=\"/search\",status=\"200\"} 1\n"), "{metrics}");
    assert!(metrics.contains("hashsrv_requests_total{route=\"/page.js\",status=\"200\"}"), "{metrics}");

    tokio::time::timeout(Duration::from_secs(30), server.stop()).await.unwrap();
}

/// A chromedriver process on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver and waits (bounded) for the line announcing its port.
    fn start() -> Driver {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is needed for the upload test: run scripts/setup.sh --with-test-tools");
        let mut child = Command::new(binary)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    let _ = tx.send(port.trim_end_matches('.').trim().to_string());
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).expect("chromedriver announced its port");
        Driver { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver and a browser session with a fresh profile, showing the page at `addr`.
async fn open_page(addr: std::net::SocketAddr) -> (Driver, tempfile::TempDir, Session) {
    let driver = tokio::task::spawn_blocking(Driver::start).await.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let session = Session::new(&driver, profile.path()).await;
    session.post("/url", json!({"url": format!("http://{addr}/")})).await;
    (driver, profile, session)
}

/// A WebDriver session (W3C protocol over HTTP).
struct Session {
    client: reqwest::Client,
    base: String,
}

impl Session {
    async fn new(driver: &Driver, profile: &std::path::Path) -> Session {
        let client = reqwest::Client::new();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.extend(["--disable-dev-shm-usage".into(), "--window-size=1600,1400".into()]);
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium(), "args": args},
        }}});
        let answer: Value = client
            .post(format!("{}/session", driver.url))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        Session { client, base: format!("{}/session/{id}", driver.url) }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self.client.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {answer}");
        answer["value"].clone()
    }

    /// The WebDriver id of the element `css` selects.
    async fn element(&self, css: &str) -> String {
        let found = self.post("/element", json!({"using": "css selector", "value": css})).await;
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string()
    }

    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []})).await
    }

    async fn close(self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}

/// The rendered grid: each figure's id, distance, thumbnail source, caption and whether the
/// thumbnail image was received and decoded.
const READ_GRID: &str = r#"return [...document.querySelectorAll("figure.hit")].map((f) => {
  const img = f.querySelector("img");
  return { id: Number(f.dataset.id), distance: Number(f.dataset.distance), src: img.getAttribute("src"),
           caption: f.querySelector("figcaption").textContent, loaded: img.complete && img.naturalWidth > 0 };
});"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_uploads_a_chosen_file_and_shows_the_returned_thumbnails() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let server = start(Arc::clone(&state)).await;
    let addr = server.addr;

    // What the server answers for the file, asked directly.
    let file = folder_root().join("cherries/cherries_2.jpg");
    let bytes = std::fs::read(&file).unwrap();
    let client = reqwest::Client::new();
    let expected: SearchResponse =
        client.post(format!("http://{addr}/search?k=12")).body(bytes).send().await.unwrap().json().await.unwrap();
    let expected = &expected.queries[0].results;
    assert_eq!(expected.len(), 12);

    let (driver, _profile, session) = open_page(addr).await;
    let element = session.element("#file").await;
    // Choosing a file through the input, as a person does: WebDriver's "send keys" to a file input.
    session.post(&format!("/element/{element}/value"), json!({"text": file.display().to_string()})).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let grid = loop {
        let grid = session.script(READ_GRID).await;
        let hits = grid.as_array().unwrap();
        if hits.len() == expected.len() && hits.iter().all(|h| h["loaded"] == true) {
            break grid;
        }
        let status = session.script("return document.getElementById('status').textContent").await;
        assert!(Instant::now() < deadline, "the grid did not show every thumbnail: {grid}; status: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (hit, want) in grid.as_array().unwrap().iter().zip(expected) {
        assert_eq!(hit["id"], want.id, "{grid}");
        assert_eq!(hit["distance"], want.distance);
        assert_eq!(hit["src"], format!("/images/{}", want.id));
        let caption = format!("#{} · d={} · {}", want.rank, want.distance, want.class_name.as_deref().unwrap());
        assert_eq!(hit["caption"], caption);
    }
    let preview = session.script("const q = document.querySelector('#query img'); return q && q.naturalWidth").await;
    assert!(preview.as_u64().is_some_and(|w| w > 0), "the chosen image is shown: {preview}");
    // The upload and every thumbnail went through the real routes.
    let metrics = state.metrics.render();
    assert!(metrics.contains("hashsrv_requests_total{route=\"/search\",status=\"200\"} 2\n"), "{metrics}");
    let thumbnails = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hashsrv_requests_total{route=\"/images/{id}\",status=\"200\"} "))
        .and_then(|n| n.parse::<usize>().ok());
    assert!(thumbnails.is_some_and(|n| n >= expected.len()), "{metrics}");

    session.close().await;
    drop(driver);
    tokio::time::timeout(Duration::from_secs(30), server.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_runs_an_evaluation_from_the_page_and_shows_its_table_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let server = start(Arc::clone(&state)).await;
    let addr = server.addr;

    let (driver, _profile, session) = open_page(addr).await;
    session.script("document.getElementById('evaluation').open = true").await;
    let button = session.element("#evaluate").await;
    session.post(&format!("/element/{button}/click"), json!({})).await;

    let read = r##"return { rows: [...document.querySelectorAll("#eval-table tr")].map((tr) =>
        [...tr.children].map((td) => td.textContent)),
      plots: [...document.querySelectorAll("#eval-plots img")].map((img) =>
        ({ src: img.getAttribute("src"), loaded: img.complete && img.naturalWidth > 0 })),
      status: document.getElementById("eval-status").textContent };"##;
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let shown = session.script(read).await;
        let plots = shown["plots"].as_array().unwrap();
        if !plots.is_empty() && plots.iter().all(|p| p["loaded"] == true) {
            break shown;
        }
        assert!(Instant::now() < deadline, "the evaluation was not shown: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let job: Value = reqwest::get(format!("http://{addr}/evaluate/1")).await.unwrap().json().await.unwrap();
    assert_eq!(job["status"], "done", "{job}");
    let metrics = &job["metrics"];
    let rows = shown["rows"].as_array().unwrap();
    let first_map = metrics["map"][0]["map"].as_f64().unwrap();
    assert_eq!(rows[0], json!(["mAP@all", format!("{first_map:.4}"), "ties: index-order"]), "{shown}");
    let ties = metrics["map"].as_array().unwrap().len();
    let cutoffs =
        metrics["map_at_k"].as_array().unwrap().len() * 2 + metrics["precision_at_k"].as_array().unwrap().len();
    assert_eq!(rows.len(), ties + cutoffs + 1, "one row per number: {shown}");
    let srcs: Vec<&Value> = shown["plots"].as_array().unwrap().iter().map(|p| &p["src"]).collect();
    let listed: Vec<&Value> = job["plots"].as_array().unwrap().iter().collect();
    assert_eq!(srcs, listed, "the page shows the job's plots");
    assert!(shown["status"].as_str().unwrap().contains("queries against"), "{shown}");

    session.close().await;
    drop(driver);
    tokio::time::timeout(Duration::from_secs(30), server.stop()).await.unwrap();
}
