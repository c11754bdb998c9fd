//! Charts for the drill and comparison reports, drawn by `plotters` as inline SVG: labelled axes with
//! their units, ticks and a grid, and a legend. Each chart is a `<figure>` whose caption says what it
//! shows, so a page stays one self-contained file.

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type Fallible = Result<(), Box<dyn std::error::Error>>;

/// Tableau's ten colours: distinct, and readable on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(232, 232, 232);
const AXIS: RGBColor = RGBColor(170, 170, 170);
const SIZE: (u32, u32) = (860, 300);
const FONT: (&str, u32) = ("sans-serif", 13);

pub fn color(k: usize) -> RGBColor {
    COLORS[k % COLORS.len()]
}

/// One named line: a value per second, None where there was none to draw.
pub struct Line<'a> {
    pub name: &'a str,
    pub values: Vec<Option<f64>>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Scale {
    Linear,
    /// For figures that span decades (latency, or routes of very different rates): zeros not drawn.
    Log,
}

/// `<figure>` with a title, what the chart tells, and the SVG (or why it could not be drawn).
fn figure(title: &str, tells: &str, draw: impl FnOnce(&mut String) -> Fallible) -> String {
    let mut svg = String::new();
    let drawn = draw(&mut svg);
    let body = match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p class=\"bad\">not drawn: {}</p>", escape(&e.to_string())),
    };
    format!(
        "<figure class=\"chart\"><figcaption><b>{}</b> {}</figcaption>{body}</figure>\n",
        escape(title),
        escape(tells)
    )
}

/// A number as an axis label: no needless decimals, thousands as k, millions as M.
pub fn short(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.1}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

/// Beyond this a figure is not drawn: no drill measures it, and plotters would loop on an axis that
/// spans it (a lying or broken server's scrape must not hang the report).
const SANE: f64 = 1e15;

/// Whether `v` can be drawn: finite, within `SANE`, and positive on a log scale.
fn sane(v: f64, scale: Scale) -> bool {
    v.is_finite() && v.abs() <= SANE && (scale == Scale::Linear || v > 0.0)
}

/// A log axis from `low` to `top` with room above for the legend: ticks at powers of 2 over a narrow
/// span (a decade would leave one label), of 10 over a wide one; at most twelve decades.
fn log_axis(low: f64, top: f64) -> plotters::coord::combinators::LogCoord<f64> {
    let (low, top) = if low.is_finite() && top.is_finite() && low > 0.0 { (low, top) } else { (0.1, 10.0) };
    let low = (low / 1.5).max(top / 1e12);
    let top = (top * 4.0).max(low * 10.0);
    let base = if top / low < 1000.0 { 2.0 } else { 10.0 };
    (low..top).log_scale().base(base).into()
}

/// Lines over the drill's seconds, x in seconds since it began.
pub fn timeline(title: &str, tells: &str, y_unit: &str, lines: &[Line], scale: Scale) -> String {
    figure(title, tells, |svg| {
        let seconds = lines.iter().map(|l| l.values.len()).max().unwrap_or(0).max(2) as f64 - 1.0;
        let drawn = |v: &Option<f64>| v.filter(|v| sane(*v, scale));
        let values = || lines.iter().flat_map(|l| l.values.iter().filter_map(drawn));
        let top = values().fold(0.0f64, f64::max);
        let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12).x_label_area_size(40).y_label_area_size(64);
        let x_range = 0.0..seconds;
        match scale {
            Scale::Linear => {
                // A quarter's headroom: the legend sits there, above the data.
                let bottom = values().fold(0.0f64, f64::min);
                let mut chart = builder.build_cartesian_2d(x_range, bottom..(top * 1.3).max(1.0))?;
                mesh(&mut chart, "seconds since the drill began", y_unit)?;
                draw_lines(&mut chart, lines, drawn)
            }
            Scale::Log => {
                let low = values().fold(f64::INFINITY, f64::min);
                let mut chart = builder.build_cartesian_2d(x_range, log_axis(low, top))?;
                mesh(&mut chart, "seconds since the drill began", &format!("{y_unit} (log scale)"))?;
                draw_lines(&mut chart, lines, drawn)
            }
        }?;
        root.present()?;
        Ok(())
    })
}

fn mesh<Y>(chart: &mut ChartContext<SVGBackend, Cartesian2d<RangedCoordf64, Y>>, x: &str, y: &str) -> Fallible
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .label_style(FONT)
        .axis_desc_style(FONT)
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .axis_style(AXIS)
        .x_labels(12)
        .y_labels(8)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    Ok(())
}

/// Each line in its colour, broken where a value is missing, and the legend.
fn draw_lines<'a, 'b: 'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>,
    lines: &[Line],
    drawn: impl Fn(&Option<f64>) -> Option<f64>,
) -> Fallible
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    for (k, line) in lines.iter().enumerate() {
        let style = color(k).stroke_width(2);
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (t, v) in line.values.iter().enumerate() {
            match drawn(v) {
                Some(v) => runs.last_mut().expect("one run at least").push((t as f64, v)),
                None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        for (i, run) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
            let single = run.len() == 1;
            let points = run.clone();
            let series = chart.draw_series(LineSeries::new(run, style))?;
            if i == 0 {
                series
                    .label(line.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
            if single {
                chart.draw_series(points.into_iter().map(|p| Circle::new(p, 2, color(k).filled())))?;
            }
        }
    }
    legend(chart)
}

fn legend<'a, 'b: 'a, X, Y>(chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>) -> Fallible
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(FONT)
        .background_style(WHITE.mix(0.85))
        .border_style(AXIS)
        .draw()?;
    Ok(())
}

/// Where a percentile sits on the "nines" axis: 90% at 1, 99% at 2, 99.9% at 3; the maximum one past
/// the last; the median, at 0.3, drawn at 0 for a tick of its own.
fn nines(percentile: f64, last: f64) -> f64 {
    if percentile >= 100.0 {
        last + 1.0
    } else if percentile <= 50.0 {
        0.0
    } else {
        -(1.0 - percentile / 100.0).log10()
    }
}

/// Latency against percentile, one curve per route: how slow the slowest 1%, 0.1%… of requests were.
pub fn percentiles(title: &str, tells: &str, curves: &[(&str, Vec<(f64, f64)>)]) -> String {
    figure(title, tells, |svg| {
        let last = curves
            .iter()
            .flat_map(|(_, c)| c.iter().filter(|(p, _)| *p < 100.0).map(|(p, _)| nines(*p, 0.0)))
            .fold(1.0f64, f64::max)
            .round();
        let ms =
            || curves.iter().flat_map(|(_, c)| c.iter().map(|(_, ms)| *ms)).filter(|v| sane(*v, Scale::Log));
        let (low, top) = (ms().fold(f64::INFINITY, f64::min), ms().fold(0.0f64, f64::max));
        // A tick at each whole step: 50%, 90%, 99%… and the maximum.
        let label = move |x: &f64| match *x {
            x if (x - x.round()).abs() > 0.01 || x > last + 1.5 => String::new(),
            x if x > last + 0.5 => "max".to_owned(),
            x if x < 0.5 => "50%".to_owned(),
            x if x < 1.5 => "90%".to_owned(),
            x => format!("99.{}%", "9".repeat(x.round() as usize - 2)).replace(".%", "%"),
        };
        let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            // Room on the right of the maximum for the legend.
            .build_cartesian_2d(-0.1..last + 2.4, log_axis(low, top))?;
        chart
            .configure_mesh()
            .x_desc("percentile of requests (each step to the right is ten times rarer)")
            .y_desc("latency, ms (log scale)")
            .label_style(FONT)
            .axis_desc_style(FONT)
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(AXIS)
            .x_labels(last as usize + 4)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| short(*v))
            .draw()?;
        for (k, (name, curve)) in curves.iter().enumerate() {
            let style = color(k).stroke_width(2);
            let points: Vec<(f64, f64)> = curve
                .iter()
                .filter(|(_, ms)| sane(*ms, Scale::Log))
                .map(|&(p, ms)| (nines(p, last), ms))
                .collect();
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color(k).filled())))?;
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        legend(&mut chart)?;
        root.present()?;
        Ok(())
    })
}

/// One bar of a bar chart: its label, value, and the colour of its group (a legend entry).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub group: usize,
}

/// Horizontal bars, each with its value written at its end; `groups` names the colours in the legend.
pub fn bars(title: &str, tells: &str, unit: &str, bars: &[Bar], groups: &[&str]) -> String {
    figure(title, tells, |svg| {
        let n = bars.len().max(1);
        let top =
            bars.iter().map(|b| b.value).filter(|v| sane(*v, Scale::Linear)).fold(0.0f64, f64::max).max(1e-9);
        let widest = bars.iter().map(|b| b.label.chars().count()).max().unwrap_or(4) as u32;
        let height = (70 + 26 * n as u32).max(140);
        let root = SVGBackend::with_string(svg, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(16 + 7 * widest)
            // Room on the right for the values and the legend.
            .build_cartesian_2d(0.0..top * 1.45, (0..n).into_segmented())?;
        // The first bar on top: row i is drawn at n - 1 - i.
        let row = |i: usize| n - 1 - i;
        let label_of = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if *i < n => {
                bars.get(row(*i)).map_or(String::new(), |b| b.label.clone())
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .x_desc(unit)
            .label_style(FONT)
            .axis_desc_style(FONT)
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .axis_style(AXIS)
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&label_of)
            .x_label_formatter(&|v| short(*v))
            .draw()?;
        for (i, bar) in bars.iter().enumerate() {
            let (y0, y1) = (SegmentValue::Exact(row(i)), SegmentValue::Exact(row(i) + 1));
            // A figure that was not measured (NaN) or cannot be drawn is said so, not drawn as 0.
            let measured = sane(bar.value, Scale::Linear) && bar.value >= 0.0;
            let value = if measured { bar.value } else { 0.0 };
            let mut rect = Rectangle::new([(0.0, y0), (value, y1)], color(bar.group).filled());
            rect.set_margin(4, 4, 0, 0);
            chart.draw_series(std::iter::once(rect))?;
            chart.draw_series(std::iter::once(Text::new(
                if measured { format!(" {}", short(value)) } else { " not measured".to_owned() },
                (value, SegmentValue::CenterOf(row(i))),
                TextStyle::from(FONT.into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )))?;
        }
        let used = |k: usize| bars.iter().any(|b| b.group == k);
        for (k, name) in groups.iter().enumerate().filter(|(k, _)| used(*k)) {
            let style = color(k).filled();
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<usize>)>>())?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], style));
        }
        if (0..groups.len()).filter(|k| used(*k)).count() > 1 {
            legend(&mut chart)?;
        }
        root.present()?;
        Ok(())
    })
}

/// The stylesheet of the report pages (`report_page.rs`, `compare_page.rs`).
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:900px;color:#222;padding:0 1em}\
h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:3px 9px;text-align:right}th{background:#f6f6f6}td.l{text-align:left}\
.bad{color:#b00}.ok{color:#070}figure{margin:1.2em 0}figcaption{margin-bottom:.3em;max-width:860px}\
.verdict{padding:.8em 1.2em;border-radius:6px;margin:1em 0}.verdict.ok{background:#e8f5e9;border:2px solid #2e7d32}\
.verdict.bad{background:#fdecea;border:2px solid #c62828}.verdict h2{border:0;margin:0 0 .4em}\
.tiles{display:flex;flex-wrap:wrap;gap:.6em}.tile{border:1px solid #ddd;border-radius:6px;padding:.5em .9em}\
.tile b{display:block;font-size:1.4em}";

/// A JSON value as page text, escaped: a string without its quotes, anything else as JSON.
pub fn text(v: &serde_json::Value) -> String {
    escape(&v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_on_axes_are_short() {
        let cases =
            [(0.0, "0"), (0.25, "0.25"), (2.5, "2.5"), (3.0, "3"), (250.0, "250"), (12_500.0, "12.5k")];
        for (v, want) in cases {
            assert_eq!(short(v), want);
        }
        assert_eq!(short(2_000_000.0), "2M");
    }

    #[test]
    fn absurd_values_are_left_out_not_drawn_forever() {
        // A lying server's 1.5e308 once made a log axis end at infinity, and plotters loop on it.
        let lines =
            [Line { name: "x", values: vec![Some(1.0), Some(1.5e308), Some(f64::INFINITY), Some(-1.0)] }];
        for scale in [Scale::Linear, Scale::Log] {
            let svg = timeline("t", "", "u", &lines, scale);
            assert!(!svg.contains("not drawn"), "{svg}");
        }
        let curve = percentiles("p", "", &[("r", vec![(50.0, 1.0), (99.0, 1.5e308), (100.0, f64::NAN)])]);
        assert!(curve.contains("50%"), "{curve}");
        let b = bars("b", "", "u", &[Bar { label: "x".into(), value: f64::NAN, group: 0 }], &["g"]);
        assert!(b.contains("not measured"), "{b}");
    }

    #[test]
    fn nines_put_each_tenfold_rarer_percentile_one_step_right() {
        assert_eq!(nines(50.0, 4.0), 0.0);
        assert!((nines(90.0, 4.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9, 4.0) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0, 4.0), 5.0);
    }

    #[test]
    fn charts_have_axes_ticks_a_legend_and_every_line() {
        let lines = [
            Line { name: "available", values: vec![Some(1000.0), Some(600.0), None, Some(0.0)] },
            Line { name: "sold", values: vec![Some(0.0), Some(300.0), Some(800.0), Some(1000.0)] },
        ];
        let svg = timeline("Units", "what is left", "units", &lines, Scale::Linear);
        for want in ["seconds since the drill began", "units", "available", "sold", "<polyline", "1000"] {
            assert!(svg.contains(want), "{want} missing from {svg}");
        }
        let log = timeline("p99", "", "ms", &lines, Scale::Log);
        assert!(log.contains("log scale") && !log.contains("not drawn"), "{log}");
        let curve = percentiles(
            "latency",
            "",
            &[("reserve", vec![(50.0, 1.0), (99.0, 4.0), (99.9, 5.0), (100.0, 9.0)])],
        );
        for want in ["50%", "90%", "99%", "99.9%", "max", "reserve"] {
            assert!(curve.contains(want), "{want} missing from {curve}");
        }
        let b = bars(
            "outcomes",
            "",
            "shoppers",
            &[Bar { label: "bought".into(), value: 1000.0, group: 0 }],
            &["x"],
        );
        assert!(b.contains("bought") && b.contains("<rect"), "{b}");
    }
}
