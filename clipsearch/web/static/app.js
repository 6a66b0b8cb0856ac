// clipsearch serve: infinite scroll, upload on choose, drop an image anywhere. No framework, no network.
"use strict";

// Infinite scroll: when the "More results" link comes into view, fetch the next page's cards in its place.
function watchMore(root) {
  const link = root.querySelector("a.more");
  if (!link || !("IntersectionObserver" in window)) return;
  const observer = new IntersectionObserver(async (entries) => {
    if (!entries.some((e) => e.isIntersecting)) return;
    observer.disconnect();
    // Appended as text: URLSearchParams would re-encode the query and turn a file name's bytes that are not
    // UTF-8 (sent percent-encoded, exactly) into replacement characters.
    const url = link.href + (link.href.includes("?") ? "&" : "?") + "partial=1";
    const response = await fetch(url);
    if (!response.ok) return;
    const holder = document.createElement("div");
    holder.innerHTML = await response.text();
    const grid = link.parentNode;
    link.remove();
    grid.append(...holder.childNodes);
    watchMore(grid);
  }, { rootMargin: "600px" });
  observer.observe(link);
}

// An image chosen or dropped becomes the query: the upload form is submitted with it.
function setUpUpload() {
  const form = document.querySelector("form.upload");
  const input = form && form.querySelector("input[type=file]");
  if (!input) return;
  input.addEventListener("change", () => input.files.length && form.submit());
  let depth = 0;
  document.addEventListener("dragenter", (e) => { if (hasFile(e)) { depth++; document.body.classList.add("dropping"); } });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; document.body.classList.remove("dropping"); } });
  document.addEventListener("dragover", (e) => { if (hasFile(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    depth = 0;
    document.body.classList.remove("dropping");
    if (!hasFile(e)) return;
    e.preventDefault();
    input.files = e.dataTransfer.files;
    form.submit();
  });
}

function hasFile(event) {
  return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".grid").forEach(watchMore);
  setUpUpload();
});
