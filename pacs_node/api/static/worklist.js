// deepsc-node worklist: polls /api/studies (same origin; the HttpOnly session
// cookie authenticates) and renders one card per study, in the server's order
// (triage rank, then arrival). No page data is kept in the browser.
"use strict";

(function () {
  const list = document.getElementById("worklist");
  const status = document.getElementById("status");
  const empty = document.getElementById("empty");
  const refreshMs = Math.max(1000, parseInt(document.body.dataset.refreshMs, 10) || 10000);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function placeholder(text) {
    const box = el("div", "thumb placeholder", text);
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", "no key image");
    return box;
  }

  function card(study) {
    const item = el("li", "study priority-" + (study.priority || "none"));
    item.dataset.studyUid = study.study_instance_uid;
    item.dataset.priority = study.priority || "";
    item.dataset.state = study.state || "";
    item.dataset.flag = study.flag || "";
    if (study.thumbnail_url) {
      const img = el("img", "thumb");
      img.alt = "key image";
      img.loading = "lazy";
      img.src = study.thumbnail_url;
      img.addEventListener("error", () => img.replaceWith(placeholder("no image")));
      item.appendChild(img);
    } else {
      const done = ["written", "exported", "rejected", "failed"].includes(study.state);
      item.appendChild(placeholder(done ? "no image" : "pending"));
    }
    const info = el("div", "info");
    const top = el("div", "top");
    top.appendChild(el("span", "priority", study.priority || "not triaged"));
    top.appendChild(el("span", "state", study.state || "no job"));
    info.appendChild(top);
    info.appendChild(el("p", "flag", study.flag || "awaiting analysis"));
    const when = study.study_date
      ? study.study_date.replace(/^(\d{4})(\d{2})(\d{2})$/, "$1-$2-$3") : "";
    const meta = [
      study.accession_number ? "Acc " + study.accession_number : null,
      when || null,
      study.study_description || null,
    ].filter(Boolean).join(" \u00b7 ");
    info.appendChild(el("p", "meta", meta || study.study_instance_uid));
    item.appendChild(info);
    return item;
  }

  async function refresh() {
    try {
      const response = await fetch("/api/studies?limit=200", {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) {
        window.location.assign("/login");
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      const cards = data.studies.map(card);
      list.replaceChildren(...cards);
      empty.hidden = cards.length > 0;
      status.textContent = cards.length + " stud" + (cards.length === 1 ? "y" : "ies") +
        " \u00b7 updated " + new Date().toLocaleTimeString();
      document.body.dataset.loaded = String((parseInt(document.body.dataset.loaded, 10) || 0) + 1);
    } catch (error) {
      status.textContent = "cannot refresh: " + error.message;
    }
  }

  refresh();
  window.setInterval(refresh, refreshMs);
})();
