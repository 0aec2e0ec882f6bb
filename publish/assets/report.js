(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var groups = Array.prototype.slice.call(document.querySelectorAll("section.group"));
  var fm = document.getElementById("f-method"), fs = document.getElementById("f-source");
  var fq = document.getElementById("f-q"), shown = document.getElementById("shown");
  var text = cards.map(function (c) { return c.textContent.toLowerCase(); });
  function apply() {
    var m = fm.value, s = fs.value, q = fq.value.trim().toLowerCase(), n = 0;
    cards.forEach(function (c, i) {
      var ok = (!m || c.getAttribute("data-method") === m) && (!s || c.getAttribute("data-source") === s)
        && (!q || text[i].indexOf(q) >= 0);
      c.hidden = !ok;
      if (ok) { n++; }
    });
    groups.forEach(function (g) { g.hidden = !g.querySelector("article.card:not([hidden])"); });
    shown.textContent = n + " of " + cards.length + " pairs shown";
    document.body.setAttribute("data-visible-cards", String(n));
  }
  function fromHash() {
    var h = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) {
        try { h[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1).replace(/\+/g, " ")); }
        catch (e) { /* a malformed hash is ignored */ }
      }
    });
    if (h.method !== undefined) { fm.value = h.method; if (fm.value !== h.method) { fm.value = ""; } }
    if (h.source !== undefined) { fs.value = h.source; if (fs.value !== h.source) { fs.value = ""; } }
    if (h.q !== undefined) { fq.value = h.q; }
  }
  function toHash() {
    var p = [];
    if (fm.value) { p.push("method=" + encodeURIComponent(fm.value)); }
    if (fs.value) { p.push("source=" + encodeURIComponent(fs.value)); }
    if (fq.value) { p.push("q=" + encodeURIComponent(fq.value)); }
    try { history.replaceState(null, "", p.length ? "#" + p.join("&") : location.pathname + location.search); }
    catch (e) { /* some file:// contexts refuse replaceState */ }
  }
  [fm, fs].forEach(function (el) { el.addEventListener("change", function () { apply(); toHash(); }); });
  fq.addEventListener("input", function () { apply(); toHash(); });
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  fromHash();
  apply();
  document.body.setAttribute("data-ready", "1");
})();
