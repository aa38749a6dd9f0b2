"""The benchmark's results as text tables, and as JSON."""
from __future__ import annotations

import json
from pathlib import Path

def _ms(s: dict) -> str:
    return f"{s['median']:9.1f} [{s['q1']:.1f}-{s['q3']:.1f}]"


def format_report(res: dict) -> str:
    """The results as text tables."""
    m, r = res["meta"], res["rates"]
    lines = [f"compass bench: {m['threads']} thread(s), {m['cpu']}, torch {m['torch']}, x265 {m['x265']}",
             f"models: {res['models']['scalable']['name']} / {res['models']['single']['name']}"]
    if res["models"]["note"]:
        lines.append(f"NOTE {res['models']['note']}")
    lines.append(f"rates: compass q={r['compass_quality']:.3f}, single q={r['single_quality']:.3f}, "
                 f"JPEG 2000 {r['jpeg2000_bpp']} bpp, HEVC QP {r['hevc_qp']} "
                 f"({'searched' if r['calibrated'] else 'given or default'} for {r['target_bpp']} bpp)")
    lines.append(f"idle child (imports only) peak RSS: {res['idle_rss_mb']:.0f} MiB; times in ms, median [IQR]")
    idle = res["idle_rss_mb"]
    for case in res["cases"].values():
        lines += ["", f"{case['width']}x{case['height']} ({case['image']}), {case['repeat']} runs",
                  f"{'codec':10} {'bpp':>6} {'encode':>24} {'decode':>24} {'peak MiB enc/dec (over idle)':>30}"]
        for name, c in case["codecs"].items():
            p = c["peak_mb"]
            lines.append(f"{name:10} {c['bpp']:6.3f} {_ms(c['encode']):>24} {_ms(c['decode']):>24} "
                         f"{p['encode']:7.0f} /{p['decode']:6.0f} ({p['encode'] - idle:.0f} / {p['decode'] - idle:.0f})")
        for k, l in enumerate(case["codecs"]["compass"]["layers"]):
            lines.append(f"  compass layer {k} {l['width']}x{l['height']}: {l['bpp']:.3f} bpp, decode to it "
                         f"{_ms(l['decode_to']).strip()}, increment {_ms(l['decode_increment']).strip()}")
        ra = case["ratios"]
        lines.append(f"decode all layers / single-layer decode: {ra['decode_all_over_single']:.2f}x "
                     f"(target <= {ra['decode_all_over_single_target']}x)")
        for other in ("jpeg2000", "hevc"):
            x = ra[f"compass_over_{other}"]
            lines.append(f"compass / {other}: encode {x['encode']:.1f}x, decode {x['decode']:.1f}x")
        fits = case["fits_memory"]
        lines.append(f"compass within {case['memory_limit_mb'] / 1024:.0f} GiB: encode {'yes' if fits['encode'] else 'NO'}, "
                     f"decode {'yes' if fits['decode'] else 'NO'}")
        for op in ("decode", "encode"):
            sec = case["codecs"]["compass"][f"{op}_sections"]
            lines.append(f"compass {op} time by section: " + ", ".join(
                f"{k} {v['share'] * 100:.0f}%" for k, v in sorted(sec.items(), key=lambda kv: -kv[1]["share"])))
        if "profile" in case["codecs"]["compass"]:
            lines.append("compass decode profile (torch operators, self time, one decode):")
            for e in case["codecs"]["compass"]["profile"]:
                lines.append(f"  {e['op']:40} {e['self_ms']:9.1f} ms {e['share'] * 100:5.1f}%  x{e['calls']}")
    liff = res["liff"]
    lines += ["", "LIFF multiply-adds per output pixel (MLP part; RDN apart, common to both)",
              f"{'widths':7} {'scale':>5} {'direct':>9} {'factorized':>10} {'ratio':>6} {'RDN':>8}"]
    for e in liff["macs"]:
        lines.append(f"{e['widths']:7} {e['scale']:>5} {e['direct']:9d} {e['factorized']:10d} {e['ratio']:6.2f} "
                     f"{e['rdn']:8d}")
    if "micro" in liff:
        lines += ["LIFF MLP part, factorized vs direct (same RDN features), ms median [IQR]"]
        for e in liff["micro"]:
            goal = f" (target >= {e['target_speedup']}x)" if e["target_speedup"] else ""
            lines.append(f"  {e['widths']:6} {e['scale']}x to {e['target'][1]}x{e['target'][0]}: direct "
                         f"{_ms(e['direct']).strip()}, factorized {_ms(e['factorized']).strip()}, speedup "
                         f"{e['speedup']:.2f}x{goal}, max |diff| {e['max_abs_diff']:.1e}")
    return "\n".join(lines)


def write_json(res: dict, path: str | Path) -> None:
    from ..fileutil import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(res, indent=2) + "\n").encode())
