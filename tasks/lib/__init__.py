"""Pure logic of the pipeline: no Prefect, no MLflow. The Prefect tasks in ``tasks/`` wrap these with IO and retries."""
