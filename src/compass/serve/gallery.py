"""The gallery page: each image an `<img srcset>` over its file's layers with `sizes` matching the page's CSS, so
the browser fetches the layer that fits its viewport and device pixel ratio; under it, which layer came (its
size, from `data-layers`: an `<img srcset>`'s naturalWidth is scaled by the chosen density) and how many of the
file's bytes decoding it reads (the prefix through that layer)."""
from __future__ import annotations

import html
import json
from urllib.parse import quote

from .library import Located

# The width an image takes in _STYLE's layout (one column up to 700 px, then two), for the browser's choice.
SIZES = "(max-width: 700px) calc(100vw - 2rem), calc(50vw - 2rem)"

_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1rem;background:#f6f6f6;color:#222}
main{display:grid;grid-template-columns:1fr;gap:2rem}
@media (min-width:701px){main{grid-template-columns:1fr 1fr}}
figure{margin:0}img{display:block;width:100%;height:auto;background:#ddd}
figcaption{margin-top:.3rem}.error{color:#a00}"""

_SCRIPT = """for (const img of document.querySelectorAll("img[data-layers]")) {
  const caption = img.closest("figure").querySelector(".read");
  const show = () => {
    const k = Number(new URL(img.currentSrc).searchParams.get("layer"));
    const [width, height, end] = JSON.parse(img.dataset.layers)[k], size = Number(img.dataset.size);
    caption.textContent = `layer ${k}, ${width}\\u00d7${height}: reads ` +
      `${end.toLocaleString("en")} of ${size.toLocaleString("en")} bytes (${Math.round(100 * end / size)}%)`;
  };
  if (img.complete && img.naturalWidth) show(); else img.addEventListener("load", show);
  img.addEventListener("error", () => { caption.textContent = "not decodable"; caption.className = "error"; });
}"""


def _figure(name: str, item: Located | str) -> str:
    link = f'<a href="/cmp/{quote(name)}">{html.escape(name)}</a>'
    if isinstance(item, str):
        return f'<figure><figcaption>{link}: <span class="error">{html.escape(item)}</span></figcaption></figure>'
    layers = item.layout.header.layers[:len(item.layout.ends)]
    urls = [f"/img/{quote(name)}?layer={k}" for k in range(len(layers))]
    srcset = ", ".join(f"{url} {layer.width}w" for url, layer in zip(urls, layers))
    return (f'<figure><img src="{urls[-1]}" srcset="{srcset}" sizes="{SIZES}" width="{layers[-1].width}" '
            f'height="{layers[-1].height}" alt="{html.escape(name)}" loading="lazy" '
            f'data-layers="{json.dumps([[l.width, l.height, e] for l, e in zip(layers, item.layout.ends)])}" '
            f'data-size="{item.version[2]}">'
            f'<figcaption>{link} · <span class="read">loading</span></figcaption></figure>')


def page(items: dict[str, Located | str]) -> str:
    """The page for `items`: name -> its located file, or why it cannot be shown."""
    figures = "\n".join(_figure(name, item) for name, item in items.items()) or "<p>No .cmp files in this folder.</p>"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>compass gallery</title>'
            f"<style>{_STYLE}</style></head>\n<body><main>\n{figures}\n</main>"
            f"<script>{_SCRIPT}</script></body></html>\n")
