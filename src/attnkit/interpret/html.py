"""One self-contained, offline HTML report of a model's attention on one input.

Everything (data, CSS, JavaScript) is inline; the file references no URL and works from disk
without a network. Views: a token-to-token *lines* view (pick the layer and heads, hover a token
to isolate its lines), the heads of one layer as heatmaps, a layer x head overview (click a cell
to select it), rollout / flow matrices and the head statistics table.

The page stays small whatever the input: weights are stored as one byte each on a square-root
scale (``w = scale * (byte / 255) ** 2``: within 0.004 of the true weight, within 0.0004 below
0.01), base64-encoded, and beyond :data:`MAX_HTML_CELLS` cells per matrix side consecutive tokens
are averaged in groups (the page says so). About 1.7 MB for 6 layers x 12 heads x 128 tokens.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..errors import AttnKitError, ShapeError
from .plot import HEAD_COLORS
from .stats import HeadStats

__all__ = ["render_html", "write_html", "MAX_HTML_BYTES", "MAX_HTML_CELLS"]

MAX_HTML_BYTES = 1_300_000  # stored attention weights (one byte each) at most, all layers and heads
MAX_HTML_CELLS = 256  # tokens per matrix side at most, whatever the budget
LINES_TOP_K = 3  # beyond LINES_ALL tokens the lines view draws each query's top keys only
LINES_ALL = 48

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.controls label{margin-right:.6em;font-size:.9em;white-space:nowrap}
.tokens span{display:inline-block;border:1px solid #ccc;border-radius:3px;padding:0 .3em;margin:.1em;
  font-family:monospace}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0;text-align:center;font-size:.8em}
canvas{image-rendering:pixelated;border:1px solid #ccc;cursor:pointer}
table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
svg text{font-family:monospace;font-size:13px;cursor:pointer}
#overview{display:grid;gap:2px}
"""

_JS = """
const D = JSON.parse(document.getElementById('attn-data').textContent);
function decode(e){const b=atob(e.data),n=b.length,f=new Float32Array(n);
  for(let i=0;i<n;i++){const x=b.charCodeAt(i)/255;f[i]=e.scale*x*x;}
  const nest=(off,dims)=>{if(dims.length===1)return f.subarray(off,off+dims[0]);
    const step=dims.slice(1).reduce((a,c)=>a*c,1);const out=[];
    for(let i=0;i<dims[0];i++)out.push(nest(off+i*step,dims.slice(1)));return out;};
  return nest(0,e.shape);}
D.attentions=decode(D.attentions);for(const name of ['rollout','flow']){if(D[name])D[name]=decode(D[name]);}
const L = D.attentions.length, H = D.attentions[0].length, T = D.tokens.length;
const TOPK = T > D.lines_all ? D.lines_top_k : T;
const state = {layer: L - 1, heads: new Set([...Array(H).keys()]), focus: null};
function color(v){const x=Math.max(0,Math.min(1,v));const r=Math.round(255*(1-x)),g=Math.round(255*(1-0.6*x));
  return `rgb(${r},${g},255)`;}
function heat(canvas, m, size){const n=m.length,k=m[0].length;canvas.width=k;canvas.height=n;
  canvas.style.width=(size||k*8)+'px';canvas.style.height=((size||k*8)*n/k)+'px';
  const ctx=canvas.getContext('2d');let mx=1e-9;for(const row of m)for(const v of row)mx=Math.max(mx,v);
  for(let i=0;i<n;i++)for(let j=0;j<k;j++){ctx.fillStyle=color(m[i][j]/mx);ctx.fillRect(j,i,1,1);}}
function drawLines(){
  const rowH=22, w=420, left=120, right=300, hgt=T*rowH+10; let s='';
  for(const h of state.heads){const a=D.attentions[state.layer][h];
    for(let i=0;i<T;i++){if(state.focus!==null&&state.focus!==i)continue;
      const cut=TOPK<T?Array.from(a[i]).sort((x,y)=>y-x)[TOPK-1]:0;
      for(let j=0;j<T;j++){const v=a[i][j];if(v<0.01||v<cut)continue;
        s+=`<line x1="${left+5}" y1="${i*rowH+15}" x2="${right-5}" y2="${j*rowH+15}"
          stroke="${D.colors[h%D.colors.length]}" stroke-width="2"
          stroke-opacity="${Math.min(1,v/Math.sqrt(state.heads.size)).toFixed(3)}"/>`;}}}
  for(let i=0;i<T;i++){
    s+=`<text x="${left}" y="${i*rowH+19}" text-anchor="end" data-i="${i}">${esc(D.tokens[i])}</text>`;
    s+=`<text x="${right}" y="${i*rowH+19}" data-i="${i}">${esc(D.tokens[i])}</text>`;}
  const svg=document.getElementById('lines');svg.setAttribute('width',w);svg.setAttribute('height',hgt);svg.innerHTML=s;
  svg.querySelectorAll('text').forEach(t=>{t.onmouseenter=()=>{state.focus=+t.dataset.i;drawLines();};
    t.onmouseleave=()=>{state.focus=null;drawLines();};});}
function esc(s){return s.replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;');}
function drawGrid(){const g=document.getElementById('headgrid');g.innerHTML='';
  for(let h=0;h<H;h++){const f=document.createElement('figure');const c=document.createElement('canvas');
    heat(c,D.attentions[state.layer][h],140);f.appendChild(c);const cap=document.createElement('figcaption');
    cap.textContent=`layer ${state.layer} head ${h}`;f.appendChild(cap);g.appendChild(f);}}
function drawOverview(){const o=document.getElementById('overview');o.style.gridTemplateColumns=`repeat(${H},60px)`;
  o.innerHTML='';for(let l=0;l<L;l++)for(let h=0;h<H;h++){const c=document.createElement('canvas');
    heat(c,D.attentions[l][h],60);c.title=`layer ${l} head ${h}`;
    c.onclick=()=>{state.layer=l;state.heads=new Set([h]);sync();};o.appendChild(c);}}
function controls(){const sel=document.getElementById('layer');
  for(let l=0;l<L;l++){const o=document.createElement('option');o.value=l;o.textContent=`layer ${l}`;
    sel.appendChild(o);}
  sel.onchange=()=>{state.layer=+sel.value;sync();};
  const hs=document.getElementById('heads');
  for(let h=0;h<H;h++){const lab=document.createElement('label');const cb=document.createElement('input');
    cb.type='checkbox';cb.dataset.h=h;cb.onchange=()=>{cb.checked?state.heads.add(h):state.heads.delete(h);drawLines();};
    lab.appendChild(cb);lab.append(` head ${h}`);lab.style.color=D.colors[h%D.colors.length];hs.appendChild(lab);}}
function sync(){document.getElementById('layer').value=state.layer;
  document.querySelectorAll('#heads input').forEach(cb=>{cb.checked=state.heads.has(+cb.dataset.h);});
  drawLines();drawGrid();}
controls();drawOverview();sync();
for(const name of ['rollout','flow']){
  if(D[name]){heat(document.getElementById(name),D[name],Math.min(640,Math.max(160,T*14)));}}
"""


def _encode(t: Tensor, name: str) -> dict:
    """``t`` (non-negative) as one byte per value on a square-root scale, base64: the ``data``,
    ``shape`` and ``scale`` the page's ``decode`` reads back."""
    t = t.detach().double().cpu()
    if not torch.isfinite(t).all():
        raise AttnKitError(f"{name} holds {int((~torch.isfinite(t)).sum())} non-finite values; expected finite weights")
    if (t < 0).any():
        raise AttnKitError(f"{name} holds negative values (min {float(t.min()):.3g}); expected weights >= 0")
    scale = max(float(t.max()), 1e-12) if t.numel() else 1.0
    q = torch.round(255 * (t / scale).sqrt()).to(torch.uint8)
    return {"data": base64.b64encode(q.numpy().tobytes()).decode("ascii"), "shape": list(t.shape), "scale": scale}


def _groups(n: int, cells: int) -> int:
    """Tokens per group so that ``n`` tokens fit in ``cells`` groups."""
    return max(1, math.ceil(n / max(1, cells)))


def _pool_tokens(t: Tensor, g: int) -> Tensor:
    """Pool the last two dims ``(..., T, T)`` in groups of ``g`` tokens: mean over the group's
    queries of the weight summed over the group's keys (rows still sum to 1)."""
    if g == 1:
        return t
    n = t.shape[-1]
    flat = t.reshape(-1, 1, n, n).double()
    pooled = torch.nn.functional.avg_pool2d(flat, g, ceil_mode=True)  # (N, 1, nG, nG) block means
    sizes = torch.tensor([min(g, n - b * g) for b in range(pooled.shape[-1])], dtype=pooled.dtype)
    return (pooled * sizes).reshape(*t.shape[:-2], *pooled.shape[-2:])


def render_html(attentions: Tensor, tokens: Sequence[str], *, title: str = "attention report",
                rollout: Tensor | None = None, flow: Tensor | None = None, stats: HeadStats | None = None,
                note: str = "") -> str:
    """The report as a string. ``attentions (L, H, T, T)`` for one input; ``tokens`` its ``T`` tokens."""
    if not isinstance(attentions, Tensor) or attentions.dim() != 4:
        got = tuple(attentions.shape) if isinstance(attentions, Tensor) else type(attentions).__name__
        raise ShapeError(f"attentions must be (L, H, T, T) for one input; got {got}")
    if len(tokens) != attentions.shape[-1]:
        raise ShapeError(f"tokens has {len(tokens)} entries; the weights cover {attentions.shape[-1]} tokens")
    n_layers, n_heads, n = attentions.shape[:3]
    cells = min(MAX_HTML_CELLS, math.isqrt(MAX_HTML_BYTES // max(1, n_layers * n_heads)))
    g = _groups(n, cells)
    labels = list(tokens) if g == 1 else [f"{a}-{min(n, a + g) - 1} {tokens[a]}" for a in range(0, n, g)]
    data = {"tokens": labels, "attentions": _encode(_pool_tokens(attentions, g), "attentions"),
            "colors": list(HEAD_COLORS), "lines_all": LINES_ALL, "lines_top_k": LINES_TOP_K,
            "rollout": _encode(_pool_tokens(rollout, g), "rollout") if rollout is not None else None,
            "flow": _encode(_pool_tokens(flow, g), "flow") if flow is not None else None}
    if g > 1:
        note = (f"{note} " if note else "") + (f"The {n} tokens are pooled in {len(labels)} groups of {g} "
                                               f"consecutive tokens for the views below (weight from group a to "
                                               f"group b = mean over a's queries of the sum over b's keys).")
    if len(labels) > LINES_ALL:
        note = (f"{note} " if note else "") + (f"Lines view: each query's top {LINES_TOP_K} keys per head.")
    payload = json.dumps(data).replace("</", "<\\/")  # safe inside <script>
    token_html = "".join(f"<span>{html.escape(t)}</span>" for t in tokens)
    matrices = "".join(
        f"<figure><canvas id='{name}'></canvas><figcaption>{name} (rows: output tokens, columns: input "
        f"tokens)</figcaption></figure>" for name, m in (("rollout", rollout), ("flow", flow)) if m is not None)
    stats_html = ""
    if stats is not None:
        stats_html = "<h2>Head statistics</h2><pre>" + html.escape(stats.summary()) + "</pre>" + _stats_table(stats)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(note)}</p>
<div class="tokens">{token_html}</div>
<h2>Token-to-token lines</h2>
<div class="controls"><select id="layer"></select> <span id="heads"></span></div>
<p style="font-size:.85em">Queries on the left, keys on the right; line opacity = weight.
Hover a token to isolate it.</p>
<svg id="lines"></svg>
<h2>Heads of the selected layer</h2><div id="headgrid" class="grid"></div>
<h2>Model overview (layers x heads; click to select)</h2><div id="overview"></div>
{"<h2>Attention rollout and flow</h2><div class='grid'>" + matrices + "</div>" if matrices else ""}
{stats_html}
<script type="application/json" id="attn-data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def _stats_table(stats: HeadStats) -> str:
    from .stats import STAT_NAMES

    head = "".join(f"<th>{s}</th>" for s in STAT_NAMES)
    rows = []
    n_layers, n_heads = stats.entropy.shape
    for ell in range(n_layers):
        for h in range(n_heads):
            cells = "".join(f"<td>{getattr(stats, s)[ell, h].item():.3f}</td>" for s in STAT_NAMES)
            rows.append(f"<tr><td>{ell}</td><td>{h}</td>{cells}</tr>")
    return f"<table><tr><th>layer</th><th>head</th>{head}</tr>{''.join(rows)}</table>"


def write_html(path: str | Path, attentions: Tensor, tokens: Sequence[str], **kwargs) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(attentions, tokens, **kwargs), encoding="utf-8")
    return path
