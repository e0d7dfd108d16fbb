//! Hand-written SVG line charts (no plotting dependency on the machine). Pure: a chart in,
//! a string out.

use std::fmt::Write as _;

/// One line on a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub color: String,
    /// SVG `stroke-dasharray` (e.g. `6 4`); empty for a solid line.
    pub dash: String,
    /// (x, y) points; drawn in x order. Points with a non-finite y (or y <= 0 on a log
    /// axis) are skipped.
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// Colors for series, chosen to stay apart for common color blindness.
pub const PALETTE: [&str; 6] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Round tick positions covering `lo..=hi`: about five on a linear axis, the powers of
/// ten on a log axis.
pub fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    if log {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let b = b.max(a + 1);
        // Up to three decades also get 2x and 5x marks; wider axes only the decades.
        let steps: &[f64] = if b - a <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
        let mut out = Vec::new();
        for e in a..=b {
            for m in steps {
                let t = m * 10f64.powi(e);
                if e == b && *m > 1.0 {
                    break;
                }
                out.push(t);
            }
        }
        return out;
    }
    let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let mut out = Vec::new();
    let mut t = first;
    while t <= hi + step * 0.999 && out.len() < 20 {
        out.push((t / step).round() * step);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl Chart {
    fn usable(&self, y: f64) -> bool {
        y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// Renders the chart; an empty chart still renders (axes and "no data").
    pub fn render(&self) -> String {
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|(x, y)| x.is_finite() && self.usable(*y))
        };
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in pts() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        let empty = !x0.is_finite();
        if empty {
            (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 10.0);
        }
        if !self.log_y {
            y0 = y0.min(0.0);
        }
        let yt = ticks(y0, y1, self.log_y);
        let xt = ticks(x0, x1, false);
        let (ylo, yhi) = (
            yt.first().copied().unwrap_or(y0),
            yt.last().copied().unwrap_or(y1),
        );
        let (xlo, xhi) = (
            xt.first().copied().unwrap_or(x0).min(x0),
            xt.last().copied().unwrap_or(x1).max(x1),
        );
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| {
            let span = if xhi > xlo { xhi - xlo } else { 1.0 };
            LEFT + (x - xlo) / span * pw
        };
        let sy = |y: f64| {
            let f = if self.log_y {
                let (a, b) = (ylo.log10(), yhi.log10());
                if b > a {
                    (y.log10() - a) / (b - a)
                } else {
                    0.5
                }
            } else if yhi > ylo {
                (y - ylo) / (yhi - ylo)
            } else {
                0.5
            };
            TOP + ph - f * ph
        };

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        for &t in &yt {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        for &t in &xt {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 18.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 12.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        if empty {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data</text>"##,
                LEFT + pw / 2.0,
                TOP + ph / 2.0
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && self.usable(*y))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = escape(&series.color);
            let dash = if series.dash.is_empty() {
                String::new()
            } else {
                format!(r#" stroke-dasharray="{}""#, escape(&series.dash))
            };
            if !points.is_empty() {
                let path: Vec<String> = points
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                    path.join(" ")
                );
                for &(x, y) in &points {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            }
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let lx = W - RIGHT + 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
                lx + 26.0,
                lx + 32.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log_y: bool, series: Vec<Series>) -> Chart {
        Chart {
            title: "p99 <latency> & loss".into(),
            x_label: "loss (%)".into(),
            y_label: "ms".into(),
            log_y,
            series,
        }
    }

    fn line(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color: PALETTE[0].into(),
            dash: String::new(),
            points,
        }
    }

    #[test]
    fn linear_ticks_are_round_and_cover() {
        let t = ticks(0.0, 217.0, false);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() >= 217.0);
        assert!(t.len() <= 8, "{t:?}");
        assert!(
            t.windows(2).all(|w| (w[1] - w[0] - 50.0).abs() < 1e-9),
            "{t:?}"
        );
        assert_eq!(ticks(0.0, 5.0, false), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn log_ticks_are_decades() {
        assert_eq!(
            ticks(0.8, 65.0, true),
            vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(ticks(10.0, 10.0, true), vec![10.0, 20.0, 50.0, 100.0]);
        assert_eq!(
            ticks(0.5, 5000.0, true),
            vec![0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
        );
        assert!(ticks(f64::NAN, 1.0, false).is_empty());
    }

    #[test]
    fn renders_one_polyline_per_series_and_escapes_text() {
        let svg = chart(
            false,
            vec![
                line(
                    "QUIC 100 ms",
                    vec![(0.0, 101.0), (2.0, 216.0), (1.0, 150.0)],
                ),
                line("TCP <100 ms>", vec![(0.0, 101.0), (2.0, 564.0)]),
            ],
        )
        .render();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("p99 &lt;latency&gt; &amp; loss"));
        assert!(svg.contains("TCP &lt;100 ms&gt;"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn log_axis_skips_non_positive_points_and_empty_charts_render() {
        let svg = chart(
            true,
            vec![line("a", vec![(0.0, 0.0), (1.0, 10.0), (2.0, f64::NAN)])],
        )
        .render();
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let empty = chart(false, vec![line("none", vec![])]).render();
        assert!(empty.contains("no data"));
        assert_eq!(empty.matches("<polyline").count(), 0);
    }
}
