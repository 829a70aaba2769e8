"""A Flask app whose workers elect one leader among them.

Run it with several workers; exactly one of them, in the whole fleet, leads::

    FLASK_CONSUL_LEADER_KEY=myservice/leader \
    gunicorn --preload --workers 3 'flask_app:create_app()'
"""
from flask import Flask

from consul_leader import leader_only
from consul_leader.contrib.flask import LeaderElection

leader = LeaderElection()


@leader_only
def send_report():
    """Runs only in the leading process; returns None elsewhere."""
    return f"report sent by {leader.candidate.identity}"


def create_app(config=None):
    app = Flask(__name__)
    app.config.update(
        CONSUL_LEADER_KEY="myservice/leader",
        CONSUL_LEADER_TTL=3,  # seconds; a crashed leader is replaced about 2*TTL later
        CONSUL_LEADER_HEALTH_URL="/leader",  # JSON: identity, is_leader, leader, fencing_token
        CONSUL_LEADER_READY_URL="/readyz",  # 200 on the leader, 503 elsewhere (a readiness probe)
        CONSUL_LEADER_LIVE_URL="/livez",  # 200 while the heartbeat is current (a liveness probe)
    )
    app.config.from_prefixed_env()  # FLASK_CONSUL_LEADER_KEY=... overrides, e.g. per deployment
    app.config.update(config or {})
    leader.init_app(app)

    @app.post("/report")
    def report():
        return {"sent": send_report()}

    return app
