# gunicorn -c apscheduler_gunicorn.conf.py apscheduler_app:app
def post_worker_init(worker):
    from apscheduler_app import start_scheduling

    start_scheduling()


def worker_exit(server, worker):
    from apscheduler_app import stop_scheduling

    stop_scheduling()
