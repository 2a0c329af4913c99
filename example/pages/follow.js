// Follow a task's (or a group's) event stream until it is done, resuming after a lost
// connection: the browser's EventSource reconnects by itself and the server starts again
// from the current state; if the stream ends without a final event (the task finished
// while we were away: the server answers 204), one GET of the status brings the end.
const FINAL_STATES = ["SUCCESS", "FAILURE", "REVOKED"];

function followStream(url, events, isFinal, {onState, onDone}) {
  let done = false;
  const source = new EventSource(url + "/events");
  const finish = (data) => {
    if (done) return;
    done = true;
    source.close();
    onDone(data);
  };
  const take = (event) => {
    const data = JSON.parse(event.data);
    onState(data);
    if (isFinal(event.type, data)) finish(data);
  };
  for (const name of events) source.addEventListener(name, take);
  source.addEventListener("error", (event) => {
    if (event.data) {  // the server's own "error" event: nothing more can come
      finish(JSON.parse(event.data));
      return;
    }
    if (!done && source.readyState === EventSource.CLOSED) {
      fetch(url).then((r) => r.json()).then((data) => { onState(data); finish(data); });
    }
  });
  return source;
}

function followTask(url, handlers) {
  return followStream(url, ["PENDING", "STARTED", "PROGRESS", "RETRY", ...FINAL_STATES],
                      (type) => FINAL_STATES.includes(type), handlers);
}

function followGroup(url, handlers) {
  return followStream(url, ["progress", "processed"],
                      (type, data) => type === "processed" || data.processed === true,
                      handlers);
}
