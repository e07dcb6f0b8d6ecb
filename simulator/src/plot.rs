//! The figures, as SVG and PNG (plotters; text drawn with a TrueType font
//! loaded at run time, so no system font library is needed to build).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Report;

/// Where Debian's fonts-dejavu-core puts its sans font.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const SIZE: (u32, u32) = (900, 540);

/// Why the figures could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The font could not be read or parsed.
    #[error(
        "plots need a TrueType font: {path}: {reason} (install fonts-dejavu-core or pass --font)"
    )]
    Font {
        /// The font file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The output directory could not be made.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Drawing failed.
    #[error("drawing {figure}: {reason}")]
    Draw {
        /// The figure.
        figure: &'static str,
        /// What plotters said.
        reason: String,
    },
}

/// The figures.
#[derive(Clone, Copy)]
enum Figure {
    Settlement,
    Detection,
    Latency,
    DeviceBytes,
}

impl Figure {
    fn name(self) -> &'static str {
        match self {
            Figure::Settlement => "settlement",
            Figure::Detection => "detection",
            Figure::Latency => "payment-latency",
            Figure::DeviceBytes => "device-bytes",
        }
    }

    fn draw<DB: DrawingBackend>(
        self,
        root: &DrawingArea<DB, Shift>,
        r: &Report,
    ) -> Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        match self {
            Figure::Settlement => settlement(root, r),
            Figure::Detection => detection(root, r),
            Figure::Latency => latency(root, r),
            Figure::DeviceBytes => device_bytes(root, r),
        }?;
        root.present().map_err(|e| e.to_string())
    }
}

/// Draws every figure into `dir` as `<name>.svg` and `<name>.png`.
pub fn draw_all(report: &Report, dir: &Path, font: &Path) -> Result<(), PlotError> {
    let bytes = std::fs::read(font).map_err(|e| PlotError::Font {
        path: font.display().to_string(),
        reason: e.to_string(),
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
        PlotError::Font {
            path: font.display().to_string(),
            reason: "not a TrueType font".into(),
        }
    })?;
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    for fig in [
        Figure::Settlement,
        Figure::Detection,
        Figure::Latency,
        Figure::DeviceBytes,
    ] {
        let name = fig.name();
        let err = |reason: String| PlotError::Draw {
            figure: name,
            reason,
        };
        let svg = dir.join(format!("{name}.svg"));
        fig.draw(&SVGBackend::new(&svg, SIZE).into_drawing_area(), report)
            .map_err(err)?;
        let png = dir.join(format!("{name}.png"));
        fig.draw(&BitMapBackend::new(&png, SIZE).into_drawing_area(), report)
            .map_err(err)?;
    }
    Ok(())
}

fn title(r: &Report, what: &str) -> String {
    format!("{} (seed {}): {}", r.scenario, r.seed, what)
}

fn settlement<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Result<(), String> {
    let hours = r.settlement.by_hour.last().map_or(1, |x| x.0).max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title(r, "receipts settled by hour"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0u32..hours, 0f64..100f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("% of honest receipts settled")
        .draw()
        .map_err(|e| e.to_string())?;
    // The limit first and wider, so that the measured line shows on top
    // where the two coincide.
    let series = [
        ("limit", RED.mix(0.45), 2usize, 7u32),
        ("measured", BLUE.mix(1.0), 1, 2),
    ];
    for (name, color, i, width) in series {
        chart
            .draw_series(LineSeries::new(
                r.settlement
                    .by_hour
                    .iter()
                    .map(|x| (x.0, 100.0 * if i == 1 { x.1 } else { x.2 })),
                color.stroke_width(width),
            ))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 16))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())
}

fn detection<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Result<(), String> {
    let d = &r.detection;
    // Settlement takes hours where the mesh takes seconds: it goes in the
    // caption, not on the same axis.
    let stages = [
        "first device",
        "50 % of devices",
        "90 % of devices",
        "all devices",
    ];
    let get = |s: &crate::report::Stages| [s.first, s.half, s.ninety, s.all];
    let m = get(&d.measured_median);
    let l = get(&d.limit_median);
    let top = m.iter().chain(&l).flatten().fold(1.0f64, |a, &b| a.max(b)) * 1.15;
    let h = |v: Option<f64>| {
        v.map_or("not reached".to_string(), |s| {
            format!("{:.1} h", s / 3600.0)
        })
    };
    let mut chart = ChartBuilder::on(root)
        .caption(
            title(
                r,
                &format!(
                    "detection latency, median of {} conflicts (to settlement: {}, limit {})",
                    d.conflicts,
                    h(d.measured_median.settlement),
                    h(d.limit_median.settlement)
                ),
            ),
            ("sans-serif", 17),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(9)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x.fract() - 0.5).abs() < 0.01 {
                stages.get(i).map_or(String::new(), |s| s.to_string())
            } else {
                String::new()
            }
        })
        .x_desc(
            "honest ledger devices holding the proof (no bar: 0 s, or not reached: see the JSON)",
        )
        .y_desc("seconds after the second spend")
        .draw()
        .map_err(|e| e.to_string())?;
    for (vals, color, off, name) in [(m, BLUE, 0.12, "measured"), (l, RED, 0.5, "limit")] {
        chart
            .draw_series(vals.iter().enumerate().filter_map(|(i, v)| {
                v.map(|v| {
                    let x = i as f64 + off;
                    Rectangle::new([(x, 0.0), (x + 0.38, v)], color.filled())
                })
            }))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    legend(&mut chart)
}

fn latency<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Result<(), String> {
    let h = &r.payments.latency_histogram;
    let xmax = h.last().map_or(10.0, |x| x.0);
    let ymax = h.iter().map(|x| x.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(
            title(
                r,
                &format!(
                    "payment protocol time ({} payments, p50 {:.1} ms, p99 {:.1} ms)",
                    r.payments.accepted, r.payments.latency_ms.p50, r.payments.latency_ms.p99
                ),
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("ms, invoice out to acknowledgement in (5 ms bins)")
        .y_desc("payments")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            h.iter()
                .map(|&(hi, c)| Rectangle::new([(hi - 5.0, 0.0), (hi, c as f64)], BLUE.filled())),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn device_bytes<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Report,
) -> Result<(), String> {
    let mut sent: Vec<f64> = r
        .devices
        .iter()
        .map(|d| d.cost.bytes_sent as f64 / 1e6)
        .collect();
    let mut recv: Vec<f64> = r
        .devices
        .iter()
        .map(|d| d.cost.bytes_received as f64 / 1e6)
        .collect();
    sent.sort_by(|a, b| b.total_cmp(a));
    recv.sort_by(|a, b| b.total_cmp(a));
    let n = sent.len().max(2);
    let ymax = sent.iter().chain(&recv).fold(0.001f64, |a, &b| a.max(b)) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title(r, "bytes per ledger device"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0usize..n, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("devices, most to least")
        .y_desc("MB over the run")
        .draw()
        .map_err(|e| e.to_string())?;
    for (v, color, name) in [(sent, BLUE, "sent"), (recv, RED, "received")] {
        chart
            .draw_series(LineSeries::new(
                v.into_iter().enumerate(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart)
}
