//! The web page in Debian's headless Chromium: the page searches with an index item's image
//! (`/?query=/images/{id}`, the "more like this" link: fetch the thumbnail, POST it to /search as
//! a multipart upload) and the test reads the rendered result grid from the DOM.
//! Needs /usr/bin/chromium (`scripts/setup.sh --with-test-tools` installs it).

mod server_support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hashsrv::server::serve;
use server_support::*;

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::clone(&state), async {
        let _ = stopped.await;
    }));

    let id = state.current().index.id(2);
    let url = format!("http://{addr}/?query=/images/{id}");
    let profile = tempfile::tempdir().unwrap();
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                // Let the page's fetches finish before the DOM is dumped.
                "--virtual-time-budget=15000",
                "--dump-dom",
            ])
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

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), server).await.unwrap().unwrap().unwrap();
}
