// The Upload page's drop zone: files dropped on it become the file input's files (the form
// works without this script; the CSP allows only scripts from the node itself).
(function () {
  "use strict";
  var zone = document.getElementById("drop-zone");
  var input = document.getElementById("file");
  if (!zone || !input || typeof DataTransfer === "undefined") { return; }
  zone.hidden = false;
  zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("over");
    var files = new DataTransfer();
    for (var i = 0; i < e.dataTransfer.files.length; i++) { files.items.add(e.dataTransfer.files[i]); }
    input.files = files.files;
    zone.textContent = files.files.length + " \u2713";
  });
}());
