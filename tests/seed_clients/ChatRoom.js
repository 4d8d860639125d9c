// The seed's React `ChatRoom` component ("Chat Application > Client (React)"), for
// tests/test_seed_clients.py. Every line of its state, effect and handlers is the seed's own.
// Two changes, both outside the socket code: the `import { ... } from 'react'` line reads the
// same hooks from the React 18 UMD global, and the JSX `return (...)` is written as the
// React.createElement calls it compiles to (there is no JSX compiler in a browser).
const { useState, useEffect, useCallback, useRef } = React;

function ChatRoom({ roomId, token }) {
  const [messages, setMessages] = useState([]);
  const [typing, setTyping] = useState([]);
  const [input, setInput] = useState('');
  const wsRef = useRef(null);

  useEffect(() => {
    const ws = new WebSocket(`ws://localhost:3001?token=${token}`);
    wsRef.current = ws;

    ws.onopen = () => {
      // Subscribe to messages in this room
      ws.send(JSON.stringify({
        type: 'subscribe',
        resource: 'chat_messages',
        filter: { roomId }
      }));

      // Subscribe to typing indicators
      ws.send(JSON.stringify({
        type: 'subscribe',
        resource: 'typing_indicators',
        filter: { roomId }
      }));

      // Load message history
      ws.send(JSON.stringify({
        type: 'list',
        requestId: 'history',
        resource: 'chat_messages',
        filter: { roomId },
        limit: 50
      }));
    };

    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);

      if (msg.type === 'data' && msg.requestId === 'history') {
        setMessages(msg.data.reverse());
      }

      if (msg.type === 'event' && msg.resource === 'chat_messages') {
        setMessages(prev => [...prev, msg.data]);
      }

      if (msg.type === 'event' && msg.resource === 'typing_indicators') {
        if (msg.event === 'insert') {
          setTyping(prev => [...prev.filter(t => t.userId !== msg.data.userId), msg.data]);
        } else if (msg.event === 'delete') {
          setTyping(prev => prev.filter(t => t.id !== msg.data.id));
        }
      }
    };

    return () => ws.close();
  }, [roomId, token]);

  const sendMessage = () => {
    if (!input.trim()) return;

    wsRef.current?.send(JSON.stringify({
      type: 'insert',
      resource: 'chat_messages',
      data: { roomId, content: input }
    }));

    setInput('');
  };

  const sendTyping = useCallback(() => {
    wsRef.current?.send(JSON.stringify({
      type: 'insert',
      resource: 'typing_indicators',
      data: { roomId }
    }));
  }, [roomId]);

  return (
    React.createElement('div', { className: 'chat-room' },
      React.createElement('div', { className: 'messages' },
        messages.map(msg => (
          React.createElement('div', { key: msg.id, className: 'message' },
            React.createElement('strong', null, msg.username, ':'), ' ', msg.content
          )
        ))
      ),

      typing.length > 0 && (
        React.createElement('div', { className: 'typing' },
          typing.map(t => t.username).join(', '), ' typing...'
        )
      ),

      React.createElement('div', { className: 'input' },
        React.createElement('input', {
          value: input,
          onChange: (e) => {
            setInput(e.target.value);
            sendTyping();
          },
          onKeyPress: (e) => e.key === 'Enter' && sendMessage()
        }),
        React.createElement('button', { onClick: sendMessage }, 'Send')
      )
    )
  );
}
