//! SVG plots of a `kxdp-bench` result, drawn from the result JSON (so an
//! old result can be re-plotted: `kxdp-bench plot kxdp-bench.json --out
//! DIR`).
//!
//! - `throughput-<F>flows.svg` per flow count F: delivered Mpps (top) and
//!   Mpps per DUT core (bottom) against the number of Services (log x),
//!   one line per mode (per mode and generator when one result holds
//!   several generators). Modes that do not use Services are one
//!   horizontal line across the Service range.
//! - `latency-cdf.svg`: the latency runs' CDFs (`latency.cdf`, quantile
//!   against µs, log x), one curve per case that has a latency run.
//!
//! Only the fields read here are required in the JSON, and modes are
//! plain strings, so results from other versions plot too. SVG only, no
//! font backend: text is emitted as SVG `<text>` with plotters' built-in
//! size estimate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;

/// Errors of plotting.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("result JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Io(String),
    #[error("drawing {file}: {reason}")]
    Draw { file: String, reason: String },
}

/// The part of a result the plots use.
#[derive(Clone, Debug, Deserialize)]
pub struct PlotReport {
    #[serde(default)]
    pub cases: Vec<PlotCase>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PlotCase {
    pub mode: String,
    #[serde(default)]
    pub services: usize,
    #[serde(default)]
    pub flows: usize,
    #[serde(default)]
    pub generator: String,
    #[serde(default)]
    pub median_mpps: Option<f64>,
    #[serde(default)]
    pub median_mpps_per_dut_core: Option<f64>,
    #[serde(default)]
    pub latency: Option<PlotLatency>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PlotLatency {
    #[serde(default)]
    pub pps: u64,
    /// (quantile, µs)
    #[serde(default)]
    pub cdf: Vec<(f64, f64)>,
}

/// The generator's short name (`afxdp-copy`, `trafgen`, ...).
fn gen_short(g: &str) -> &str {
    g.split_whitespace().next().unwrap_or("")
}

/// Writes every plot for the result JSON `json` into `out`; returns the
/// files written.
pub fn plot_json(json: &str, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let report: PlotReport = serde_json::from_str(json)?;
    plot_report(&report, out)
}

/// Re-plots a result file.
pub fn plot_file(json: &Path, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let text = std::fs::read_to_string(json)
        .map_err(|e| PlotError::Io(format!("read {}: {e}", json.display())))?;
    plot_json(&text, out)
}

fn plot_report(r: &PlotReport, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(out)
        .map_err(|e| PlotError::Io(format!("mkdir {}: {e}", out.display())))?;
    let mut files = Vec::new();
    // One colour per series name across every plot of the report.
    let every: Vec<&PlotCase> = r.cases.iter().collect();
    let names: BTreeSet<String> = series_names(&every).into_iter().collect();
    let palette: Palette = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, color(i)))
        .collect();
    let flows: BTreeSet<usize> = r.cases.iter().map(|c| c.flows).collect();
    for f in flows {
        let path = out.join(format!("throughput-{f}flows.svg"));
        let cases: Vec<&PlotCase> = r.cases.iter().filter(|c| c.flows == f).collect();
        draw_throughput(&path, f, &cases, &palette).map_err(|reason| PlotError::Draw {
            file: path.display().to_string(),
            reason,
        })?;
        files.push(path);
    }
    if r.cases
        .iter()
        .any(|c| c.latency.as_ref().is_some_and(|l| !l.cdf.is_empty()))
    {
        let path = out.join("latency-cdf.svg");
        draw_latency(&path, &r.cases, &palette).map_err(|reason| PlotError::Draw {
            file: path.display().to_string(),
            reason,
        })?;
        files.push(path);
    }
    Ok(files)
}

/// A series name per case: the mode, plus the generator when the cases
/// mix generators for one mode.
fn series_names(cases: &[&PlotCase]) -> Vec<String> {
    let mut gens: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in cases {
        gens.entry(&c.mode)
            .or_default()
            .insert(gen_short(&c.generator));
    }
    cases
        .iter()
        .map(|c| match gens.get(c.mode.as_str()) {
            Some(g) if g.len() > 1 => format!("{} [{}]", c.mode, gen_short(&c.generator)),
            _ => c.mode.clone(),
        })
        .collect()
}

fn color(i: usize) -> RGBColor {
    // Distinguishable on white (Okabe-Ito, then darker fallbacks).
    const C: [(u8, u8, u8); 10] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (0, 0, 0),
        (120, 120, 120),
        (140, 60, 20),
        (60, 20, 140),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

type Lines = BTreeMap<String, Vec<(f64, f64)>>;
type Palette = BTreeMap<String, RGBColor>;

fn draw_throughput(
    path: &Path,
    flows: usize,
    cases: &[&PlotCase],
    palette: &Palette,
) -> Result<(), String> {
    let names = series_names(cases);
    let mut svc: Vec<f64> = cases
        .iter()
        .filter(|c| c.services > 0)
        .map(|c| c.services as f64)
        .collect();
    svc.sort_by(f64::total_cmp);
    svc.dedup();
    let (lo, hi) = match (svc.first(), svc.last()) {
        (Some(&lo), Some(&hi)) => (lo, hi),
        _ => (100.0, 10_000.0),
    };
    // Two series maps: Mpps and Mpps per DUT core.
    let mut mpps: Lines = BTreeMap::new();
    let mut per_core: Lines = BTreeMap::new();
    for (c, name) in cases.iter().zip(&names) {
        let xs: Vec<f64> = if c.services > 0 {
            vec![c.services as f64]
        } else {
            vec![lo, hi]
        };
        for x in xs {
            if let Some(y) = c.median_mpps.filter(|y| y.is_finite()) {
                mpps.entry(name.clone()).or_default().push((x, y));
            }
            if let Some(y) = c.median_mpps_per_dut_core.filter(|y| y.is_finite()) {
                per_core.entry(name.clone()).or_default().push((x, y));
            }
        }
    }
    for l in mpps.values_mut().chain(per_core.values_mut()) {
        l.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    let root = SVGBackend::new(path, (960, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(500);
    let x_range = (lo / 1.6)..(hi * 1.6);
    for (area, lines, ylabel, title) in [
        (
            &top,
            &mpps,
            "Mpps delivered",
            format!("Delivered packets/s against Services ({flows} flows)"),
        ),
        (
            &bottom,
            &per_core,
            "Mpps per DUT core",
            format!("Packets/s per busy DUT core ({flows} flows)"),
        ),
    ] {
        let ymax = lines
            .values()
            .flatten()
            .map(|p| p.1)
            .fold(0.0_f64, f64::max)
            .max(0.01)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range.clone().log_scale(), 0.0..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("Services (log)")
            .y_desc(ylabel)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, pts) in lines {
            let c = palette.get(name).copied().unwrap_or(BLACK);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_latency(path: &Path, cases: &[PlotCase], palette: &Palette) -> Result<(), String> {
    let with: Vec<&PlotCase> = cases
        .iter()
        .filter(|c| c.latency.as_ref().is_some_and(|l| !l.cdf.is_empty()))
        .collect();
    let names = series_names(&with);
    // Several latency cases for one series name: add Services and flows.
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &names {
        *count.entry(n).or_default() += 1;
    }
    let labels: Vec<String> = with
        .iter()
        .zip(&names)
        .map(|(c, n)| {
            if count.get(n.as_str()).copied().unwrap_or(0) > 1 {
                format!("{n} N={} flows={}", c.services, c.flows)
            } else {
                n.clone()
            }
        })
        .collect();
    let pts = |c: &PlotCase| -> Vec<(f64, f64)> {
        c.latency
            .as_ref()
            .map(|l| {
                l.cdf
                    .iter()
                    .filter(|(q, us)| q.is_finite() && us.is_finite())
                    // Log x: clamp 0 µs (sub-µs bucket) to a visible floor.
                    .map(|&(q, us)| (us.max(0.1), q))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<f64> = with.iter().flat_map(|c| pts(c)).map(|p| p.0).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0_f64, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.1, 10_000.0)
    };
    let pps: BTreeSet<u64> = with
        .iter()
        .filter_map(|c| c.latency.as_ref().map(|l| l.pps))
        .collect();
    let pps: Vec<String> = pps.iter().map(u64::to_string).collect();
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("One-way latency CDF at {} packets/s", pps.join("/")),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("latency, µs (log)")
        .y_desc("fraction of packets")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, ((c, label), name)) in with.iter().zip(&labels).zip(&names).enumerate() {
        // A series' colour as in the throughput plots; several latency
        // cases of one series: colours after the palette's.
        let col = if count.get(name.as_str()).copied().unwrap_or(0) > 1 {
            color(palette.len() + i)
        } else {
            palette.get(name).copied().unwrap_or(BLACK)
        };
        chart
            .draw_series(LineSeries::new(pts(c), col.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(mode: &str, services: usize, mpps: f64, latency: bool) -> serde_json::Value {
        let mut c = serde_json::json!({
            "mode": mode, "services": services, "flows": 1, "frame_len": 60,
            "generator": "afxdp-copy", "runs": [],
            "median_mpps": mpps, "median_mpps_per_dut_core": mpps * 1.5,
            "dut_drops": null, "latency": null, "error": null
        });
        if latency {
            c["latency"] = serde_json::json!({
                "pps": 10000, "sent": 100, "samples": 100, "p50_us": 20.0,
                "p90_us": 30.0, "p99_us": 50.0, "p999_us": 80.0, "max_us": 100.0,
                "cdf": [[0.0, 0.0], [0.5, 20.0 * mpps], [0.99, 50.0 * mpps], [1.0, 100.0 * mpps]]
            });
        }
        c
    }

    #[test]
    fn a_small_result_plots_every_mode_into_valid_svg() {
        let report = serde_json::json!({
            "meta": {"date": "2026-12-04"},
            "cases": [
                case("direct", 0, 2.0, true),
                case("kernel-iptables", 100, 0.4, true),
                case("kernel-iptables", 10000, 0.3, false),
                case("kxdp", 100, 0.6, true),
                case("kxdp", 10000, 0.55, false),
                case("kxdp-null", 0, 0.65, false),
            ]
        });
        let dir = std::env::temp_dir().join(format!("kxdp-plots-test-{}", std::process::id()));
        let files = plot_json(&report.to_string(), &dir).expect("plots");
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["throughput-1flows.svg", "latency-cdf.svg"]);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim))
            .collect();
        for mode in ["direct", "kernel-iptables", "kxdp", "kxdp-null"] {
            // Legend entries in both panels.
            assert_eq!(
                texts.iter().filter(|t| **t == mode).count(),
                2,
                "{mode}: {texts:?}"
            );
        }
        assert!(texts.iter().any(|t| t.contains("Services")));
        // Lines: one polyline per mode per panel.
        let polylines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert!(polylines >= 8, "{polylines} polylines");

        let cdf = std::fs::read_to_string(&files[1]).unwrap();
        let doc = roxmltree::Document::parse(&cdf).expect("well-formed SVG");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim))
            .collect();
        for mode in ["direct", "kernel-iptables", "kxdp"] {
            assert!(texts.contains(&mode), "{mode}: {texts:?}");
        }
        assert!(!texts.contains(&"kxdp-null"), "no latency run, no curve");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mixed_generators_get_their_own_series_and_bad_json_is_an_error() {
        let mut a = case("kxdp-null", 0, 0.6, false);
        let mut b = case("kxdp-null", 0, 0.5, false);
        a["generator"] = "afxdp-copy".into();
        b["generator"] = "trafgen (1 flows)".into();
        let report = serde_json::json!({ "cases": [a, b] });
        let dir = std::env::temp_dir().join(format!("kxdp-plots-gen-{}", std::process::id()));
        let files = plot_json(&report.to_string(), &dir).expect("plots");
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("kxdp-null [afxdp-copy]"), "{svg}");
        assert!(svg.contains("kxdp-null [trafgen]"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(plot_json("{\"cases\": 3}", &dir).is_err());
    }
}
