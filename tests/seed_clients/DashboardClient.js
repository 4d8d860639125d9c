class DashboardClient {
  constructor(url, token) {
    this.ws = new WebSocket(`${url}?token=${token}`);
    this.metrics = {};
    this.alerts = [];
    this.listeners = new Set();

    this.ws.onopen = () => this.subscribe();
    this.ws.onmessage = (e) => this.handleMessage(JSON.parse(e.data));
  }

  subscribe() {
    this.ws.send(JSON.stringify({
      type: 'subscribe',
      resource: 'metrics'
    }));

    this.ws.send(JSON.stringify({
      type: 'subscribe',
      resource: 'alerts',
      filter: { acknowledged: false }
    }));
  }

  handleMessage(msg) {
    if (msg.type === 'event') {
      if (msg.resource === 'metrics') {
        const { type, value, host } = msg.data;
        this.metrics[`${host}:${type}`] = { value, timestamp: msg.timestamp };
      }

      if (msg.resource === 'alerts') {
        if (msg.event === 'insert') {
          this.alerts.push(msg.data);
        } else if (msg.event === 'update') {
          const idx = this.alerts.findIndex(a => a.id === msg.data.id);
          if (idx >= 0) {
            this.alerts[idx] = msg.data;
          }
        }
      }

      this.notifyListeners();
    }
  }

  acknowledgeAlert(alertId) {
    this.ws.send(JSON.stringify({
      type: 'update',
      resource: 'alerts',
      id: alertId,
      data: { acknowledged: true }
    }));
  }

  onUpdate(callback) {
    this.listeners.add(callback);
    return () => this.listeners.delete(callback);
  }

  notifyListeners() {
    this.listeners.forEach(cb => cb({
      metrics: this.metrics,
      alerts: this.alerts
    }));
  }
}
