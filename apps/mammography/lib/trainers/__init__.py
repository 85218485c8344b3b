from .corrections import CorrectionsTrainer, final_corrections, install_train_guard

__all__ = ["CorrectionsTrainer", "final_corrections", "install_train_guard"]
