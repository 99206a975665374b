/* A Web Worker that runs in a hidden iframe, so that search works on pages opened from disk.
 *
 * A page opened as file:// may not start a Worker: the browser refuses `new Worker(url)`,
 * and the theme then hides its search box, which runs the search in a worker.
 * mkdocs-material's offline plugin answers this with the iframe-worker package loaded from
 * a CDN, which cannot load offline. This file, written for funcnn and shipped inside the
 * site, does the same job. Its name contains "iframe-worker" on purpose: the offline plugin
 * then adds no CDN script of its own (it looks for that name among `extra.polyfills`).
 *
 * The worker's script runs in a same-origin iframe, where `postMessage` and `importScripts`
 * are redefined to behave as they do in a worker. Messages are copied both ways
 * (structuredClone), as a worker's are. Served over http(s), the browser's Worker is kept.
 */
(function () {
  "use strict";
  if (location.protocol !== "file:") return;

  /* Load the scripts one after the other into the iframe's window; resolves when all ran. */
  function loadScripts(scope, urls) {
    return urls.reduce(
      (done, url) =>
        done.then(
          () =>
            new Promise((resolve, reject) => {
              const script = scope.document.createElement("script");
              script.src = new URL(url, location.href).href;
              script.onload = resolve;
              script.onerror = () => reject(new Error(`worker script not found: ${url}`));
              scope.document.head.appendChild(script);
            })
        ),
      Promise.resolve()
    );
  }

  class IframeWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this.pending = []; // messages posted before the worker's script has run
      this.frame = document.createElement("iframe");
      this.frame.hidden = true;
      (document.body || document.documentElement).appendChild(this.frame);
      const scope = this.frame.contentWindow;
      // inside the worker, postMessage talks to the page, importScripts loads more code
      // (a promise, which the theme's search worker awaits)
      scope.postMessage = (data) => this.receive(structuredClone(data));
      scope.importScripts = (...urls) => loadScripts(scope, urls);
      loadScripts(scope, [url]).then(
        () => {
          const pending = this.pending;
          this.pending = null;
          pending.forEach((data) => this.postMessage(data));
        },
        (error) => this.fail(error)
      );
    }

    /* The page sends `data` to the worker. */
    postMessage(data) {
      if (this.pending) {
        this.pending.push(data);
        return;
      }
      const scope = this.frame.contentWindow;
      const copy = scope.structuredClone(data); // objects of the worker's own realm
      setTimeout(() => scope.dispatchEvent(new scope.MessageEvent("message", { data: copy })));
    }

    /* The worker sends `data` to the page. */
    receive(data) {
      setTimeout(() => {
        const event = new MessageEvent("message", { data });
        if (this.onmessage) this.onmessage(event);
        this.dispatchEvent(event);
      });
    }

    fail(error) {
      const event = new ErrorEvent("error", { error, message: error.message });
      if (this.onerror) this.onerror(event);
      this.dispatchEvent(event);
    }

    terminate() {
      this.frame.remove();
    }
  }

  window.Worker = IframeWorker;
})();
