"""streamops predictor: a replica that keeps production models in memory, hot-reloads them on
promotion, answers coalesced online predictions and scores batch jobs."""
