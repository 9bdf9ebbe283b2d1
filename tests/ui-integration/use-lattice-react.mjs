// React: the connection, the peer list and one conversation, kept current by the backend's
// events. `tauri` is `window.__TAURI__` (the app sets `withGlobalTauri`).
import { useCallback, useEffect, useState } from "react";
import { ConnectionState, Event } from "../../ui/js/contract.js";
import { merge } from "./messages.mjs";

export function useLattice(tauri, peerId) {
  const [connection, setConnection] = useState({ state: ConnectionState.OFFLINE });
  const [peers, setPeers] = useState([]);
  const [messages, setMessages] = useState([]);

  useEffect(() => {
    let live = true;
    const stops = [
      tauri.event.listen(Event.CONNECTION_STATE, (e) => setConnection(e.payload)),
      tauri.event.listen(Event.PEER_LIST, (e) => setPeers(e.payload)),
    ];
    tauri.core.invoke("bootstrap").then((b) => {
      if (live) {
        setConnection(b.connection);
        setPeers(b.peers);
      }
    });
    return () => {
      live = false;
      for (const stop of stops) stop.then((unlisten) => unlisten());
    };
  }, [tauri]);

  useEffect(() => {
    let live = true;
    setMessages([]);
    if (!peerId) return undefined;
    const stop = tauri.event.listen(Event.MESSAGE, (e) => {
      if (e.payload.peerId === peerId) setMessages((list) => merge(list, [e.payload]));
    });
    tauri.core.invoke("load_messages", { peerId, before: null, after: null, limit: 50 })
      .then((page) => live && setMessages((list) => merge(list, page.messages)));
    return () => {
      live = false;
      stop.then((unlisten) => unlisten());
    };
  }, [tauri, peerId]);

  const send = useCallback(async (text) => {
    const sent = await tauri.core.invoke("send_message", { peerId, text });
    setMessages((list) => merge(list, [sent]));
  }, [tauri, peerId]);

  return { connection, peers, messages, send };
}
