"""One self-contained, offline HTML report of a model's attention on one input.

Everything (data, CSS, JavaScript) is inline; the file references no URL and works from disk
without a network. Views: a token-to-token *lines* view (pick the layer and heads, hover a token
to isolate its lines), the heads of one layer as heatmaps, a layer x head overview (click a cell
to select it), rollout / flow matrices and the head statistics table.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ..errors import ShapeError
from .plot import HEAD_COLORS
from .stats import HeadStats

__all__ = ["render_html", "write_html"]

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
const L = D.attentions.length, H = D.attentions[0].length, T = D.tokens.length;
const state = {layer: L - 1, heads: new Set([...Array(H).keys()]), focus: null};
function color(v){const x=Math.max(0,Math.min(1,v));const r=Math.round(255*(1-x)),g=Math.round(255*(1-0.6*x));
  return `rgb(${r},${g},255)`;}
function heat(canvas, m, size){const n=m.length,k=m[0].length;canvas.width=k;canvas.height=n;
  canvas.style.width=(size||k*8)+'px';canvas.style.height=((size||k*8)*n/k)+'px';
  const ctx=canvas.getContext('2d');const mx=Math.max(1e-9,...m.flat());
  for(let i=0;i<n;i++)for(let j=0;j<k;j++){ctx.fillStyle=color(m[i][j]/mx);ctx.fillRect(j,i,1,1);}}
function drawLines(){
  const rowH=22, w=420, left=120, right=300, hgt=T*rowH+10; let s='';
  for(const h of state.heads){const a=D.attentions[state.layer][h];
    for(let i=0;i<T;i++){if(state.focus!==null&&state.focus!==i)continue;
      for(let j=0;j<T;j++){const v=a[i][j];if(v<0.01)continue;
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
for(const name of ['rollout','flow']){if(D[name]){heat(document.getElementById(name),D[name],Math.max(160,T*14));}}
"""


def _rounded(t: Tensor, digits: int = 4) -> list:
    return t.detach().double().cpu().round(decimals=digits).tolist()


def render_html(attentions: Tensor, tokens: Sequence[str], *, title: str = "attention report",
                rollout: Tensor | None = None, flow: Tensor | None = None, stats: HeadStats | None = None,
                note: str = "") -> str:
    """The report as a string. ``attentions (L, H, T, T)`` for one input; ``tokens`` its ``T`` tokens."""
    if not isinstance(attentions, Tensor) or attentions.dim() != 4:
        got = tuple(attentions.shape) if isinstance(attentions, Tensor) else type(attentions).__name__
        raise ShapeError(f"attentions must be (L, H, T, T) for one input; got {got}")
    if len(tokens) != attentions.shape[-1]:
        raise ShapeError(f"tokens has {len(tokens)} entries; the weights cover {attentions.shape[-1]} tokens")
    data = {"tokens": list(tokens), "attentions": _rounded(attentions), "colors": list(HEAD_COLORS),
            "rollout": _rounded(rollout) if rollout is not None else None,
            "flow": _rounded(flow) if flow is not None else None}
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
